"""k-means over items spread across processes: greedy k-means++ seeding, Lloyd iterations, assignment and
per-cluster selection, each rank holding only its own slice of the items (torch.distributed: gloo on CPU, NCCL on GPU).

One code path for one and for many processes: with a single process every collective is the identity. The random
draws (seeding, random scores) depend on the global item index only, never on how items are split over ranks, and the
seeding's potentials are summed in fixed point (exact), so a run on N processes equals the 1-process run up to the
float64 summation order of Lloyd's sums.

Items are unit vectors for cosine (spherical k-means: centroids renormalised) and raw vectors for L2; distances are
squared Euclidean in both cases (between unit vectors ||x - c||^2 = 2 - 2 <x, c>).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch
import torch.distributed as dist

from amoe_core.launch.distributed import current_info

Metric = Literal["cosine", "l2"]


# ------------------------------------------------------------------------------------------------------ processes
@dataclass(frozen=True)
class Comm:
    """This process's place in the group and the few collectives k-means needs, on numpy arrays."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collectives run (CUDA for NCCL)

    @classmethod
    def current(cls) -> Comm:
        info = current_info()
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        device = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(info.rank, info.world_size, device)

    def part(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of n items (sizes differ by at most one)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def sum(self, a: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks (float64 in, float64 out: the order of summation barely matters)."""
        if self.world == 1:
            return a
        t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def concat(self, a: np.ndarray) -> np.ndarray:
        """Every rank's `a` concatenated along axis 0 in rank order, on every rank (sizes may differ)."""
        if self.world == 1:
            return a
        sizes = self.gather_scalars(float(len(a))).astype(np.int64)
        padded = np.zeros((int(sizes.max()), *a.shape[1:]), dtype=a.dtype)
        padded[: len(a)] = a
        t = torch.from_numpy(padded).to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return np.concatenate([o.cpu().numpy()[:s] for o, s in zip(out, sizes)])

    def gather_scalars(self, value: float) -> np.ndarray:
        """[world] float64: every rank's `value`."""
        if self.world == 1:
            return np.array([value], dtype=np.float64)
        mine = np.zeros(self.world, dtype=np.float64)
        mine[self.rank] = value
        return self.sum(mine)


SINGLE = Comm()


# ------------------------------------------------------------------------------------------------------ primitives
_GPU_RESOURCES: list = []


def use_gpu() -> bool:
    return faiss.get_num_gpus() > 0


def flat_index(centroids: np.ndarray, metric: Metric) -> faiss.Index:
    """Exact nearest-centroid index; on this process's GPU when faiss sees one (one GPU per rank)."""
    index = faiss.IndexFlatIP(centroids.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(centroids.shape[1])
    if use_gpu():
        if not _GPU_RESOURCES:
            _GPU_RESOURCES.append(faiss.StandardGpuResources())
        index = faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], current_info().local_rank % faiss.get_num_gpus(), index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def as_float32(x: np.ndarray, metric: Metric) -> np.ndarray:
    """Rows of `x` as float32, normalised to unit length for cosine (a copy); for L2 float32 input is not copied."""
    if metric == "l2":
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.array(x, dtype=np.float32, copy=True)
    faiss.normalize_L2(out)
    return out


def gather(x: np.ndarray, rows: np.ndarray, metric: Metric, chunk_size: int = 65536) -> np.ndarray:
    """`x[rows]` as float32 (normalised for cosine), copied chunk by chunk: from a float16 memmap the peak is the
    float32 result plus one chunk, not a float16 copy of all the rows beside it."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk_size):
        out[start : start + chunk_size] = x[rows[start : start + chunk_size]]
    if metric == "cosine":
        faiss.normalize_L2(out)
    return out


def to_sqdist(values: np.ndarray, metric: Metric) -> np.ndarray:
    """faiss returns inner products for cosine; between unit vectors ||x - c||^2 = 2 - 2 <x, c>."""
    return np.maximum(2.0 - 2.0 * values, 0.0) if metric == "cosine" else values


def assign(
    x: np.ndarray, centroids: np.ndarray, metric: Metric, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of `x` (any float dtype, e.g. a float16 memmap), chunk by chunk so only one
    chunk is ever copied to float32. Returns (labels int32 [n], squared distances float32 [n])."""
    index = flat_index(centroids, metric)
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    dist_sq = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        chunk = as_float32(x[start : start + chunk_size], metric)
        d, i = index.search(chunk, 1)
        labels[start : start + len(chunk)] = i[:, 0]
        dist_sq[start : start + len(chunk)] = to_sqdist(d[:, 0], metric)
    return labels, dist_sq


def hash_scores(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform pseudo-random score in [0, 1) per global item index (splitmix64): the same for an item whatever
    process holds it, so random picks do not depend on the number of processes."""
    z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def per_cluster_pick(labels: np.ndarray, scores: np.ndarray, per_cluster: int | np.ndarray, k: int) -> np.ndarray:
    """Indices of the `per_cluster` lowest-score items of every cluster (all of a smaller cluster); sorted.

    `per_cluster` is one count for all clusters or an array of k counts; ties go to the lower index.
    """
    order = np.lexsort((np.arange(len(labels)), scores, labels))  # by cluster, then score, then index
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(k), side="left")
    rank = np.arange(len(order)) - starts[sorted_labels]  # position of each item inside its cluster
    quota = np.broadcast_to(np.asarray(per_cluster), (k,))
    return np.sort(order[rank < quota[sorted_labels]])


def pick_lowest(
    labels: np.ndarray, scores: np.ndarray, index: np.ndarray, per_cluster: int, k: int, comm: Comm = SINGLE
) -> np.ndarray:
    """Global indices (sorted, on every rank) of the `per_cluster` lowest-score items of each cluster over all ranks.

    Each rank proposes its own `per_cluster` best per cluster; the global best are among those proposals."""
    local = per_cluster_pick(labels, scores, per_cluster, k)
    cand = comm.concat(np.stack([labels[local], scores[local], index[local]], axis=1).astype(np.float64))
    if comm.world == 1:
        return np.sort(index[local])
    labels_all, scores_all, index_all = cand[:, 0].astype(np.int64), cand[:, 1], cand[:, 2].astype(np.int64)
    order = np.argsort(index_all, kind="stable")  # ties go to the lower global index, as in one process
    best = per_cluster_pick(labels_all[order], scores_all[order], per_cluster, k)
    return np.sort(index_all[order][best])


# ------------------------------------------------------------------------------------------------------ k-means
def _sqdist_to_many(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray, metric: Metric) -> np.ndarray:
    """[n, m] float32 squared distances of the rows of `x` to the m rows of `c`."""
    d = x @ c.T
    d *= -2.0
    d += 2.0 if metric == "cosine" else x_sq[:, None] + np.einsum("ij,ij->i", c, c)[None]
    return np.maximum(d, 0.0, out=d)


def _owned_rows(x: np.ndarray, positions: np.ndarray, offsets: np.ndarray, comm: Comm) -> np.ndarray:
    """Rows of the items at global `positions`, each read by the rank that owns it, on every rank (float32)."""
    rows = np.zeros((len(positions), x.shape[1]), dtype=np.float64)
    lo, hi = offsets[comm.rank], offsets[comm.rank + 1]
    mine = (positions >= lo) & (positions < hi)
    rows[mine] = x[positions[mine] - lo]
    return comm.sum(rows).astype(np.float32)


def _fixed_point(d: np.ndarray, scale: float) -> np.ndarray:
    """Squared distances as int64 units of 1/scale (a power of two: the product is exact): integer sums are exact, so
    the potential and its cumulative sums are the same whatever the split of the items over ranks (float sums would
    differ in their last bits)."""
    return np.floor(d * np.float32(scale)).astype(np.int64)


def kmeans_pp(
    x: np.ndarray, k: int, metric: Metric, seed: int, comm: Comm = SINGLE, trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding over the items of all ranks, `x` being this rank's float32 slice (rank order = global
    order), as the reference (ssl-data-curation, after scikit-learn): for each new centre draw `trials` candidates
    (default 2 + int(ln k)) with probability proportional to their squared distance to the nearest centre so far and
    keep the one that lowers the potential most; `trials=1` is plain k-means++ (Arthur & Vassilvitskii 2007).

    Rank-independent: the draws are uniform numbers on the global cumulative potential, which is summed in fixed
    point (int64, exact); the candidates' potentials too. Any number of processes picks the same centres."""
    trials = trials or 2 + int(np.log(k))
    rng = np.random.default_rng(seed)
    sizes = comm.gather_scalars(float(len(x))).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    x_sq = np.einsum("ij,ij->i", x, x) if metric == "l2" else np.empty(0, np.float32)

    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = _owned_rows(x, np.array([rng.integers(n)]), offsets, comm)[0]
    closest = _sqdist_to_many(x, x_sq, centres[:1], metric)[:, 0]
    # a power of two (exact products) such that the n quantised distances, each <= the largest one, fit in int64
    largest = float(comm.concat(np.array([closest.max(initial=0.0)], dtype=np.float64)).max())
    scale = 2.0 ** (61 - int(np.ceil(np.log2(max(n, 2)))) - int(np.ceil(np.log2(max(largest, 1e-30)))))
    q = _fixed_point(closest, scale)
    for c in range(1, k):
        pots = comm.concat(np.array([q.sum()], dtype=np.int64))  # exact per-rank potentials
        total = int(pots.sum())
        u = rng.random(trials)
        if total == 0:  # every item sits on a centre already (duplicates): any items will do
            cand = np.minimum((u * n).astype(np.int64), n - 1)
        else:
            targets = np.minimum((u * total).astype(np.int64), total - 1)  # the item whose interval holds it
            cum_ranks = np.concatenate([[0], np.cumsum(pots)])
            cand = np.zeros(trials, dtype=np.int64)
            owner = np.searchsorted(cum_ranks, targets, side="right") - 1
            here = owner == comm.rank
            if here.any():
                local = np.searchsorted(np.cumsum(q), targets[here] - cum_ranks[comm.rank], side="right")
                cand[here] = offsets[comm.rank] + local
            cand = comm.concat(cand[None]).sum(0) if comm.world > 1 else cand  # each rank filled its own
        rows = _owned_rows(x, cand, offsets, comm)
        # the potential each candidate would leave, in fixed point; the lowest wins (the first on a tie)
        d = _sqdist_to_many(x, x_sq, rows, metric)
        new_pots = comm.concat(_fixed_point(np.minimum(closest[:, None], d), scale).sum(0)[None]).sum(0)
        best = int(np.argmin(new_pots))
        centres[c] = rows[best]
        np.minimum(closest, d[:, best], out=closest)
        q = _fixed_point(closest, scale)
    return centres


def lloyd(
    x: np.ndarray,
    centroids: np.ndarray,
    iters: int,
    metric: Metric,
    comm: Comm = SINGLE,
    chunk_size: int = 65536,
) -> tuple[np.ndarray, list[float]]:
    """Lloyd iterations from `centroids` over every rank's float32 slice `x`: assignment (faiss), per-cluster float64
    sums all-reduced, means (renormalised for cosine); an empty cluster keeps its centroid. Stops early once no item
    changes cluster. Returns the centroids and the mean squared distance item -> centroid before each update."""
    n_total = int(comm.gather_scalars(float(len(x))).sum())
    objective: list[float] = []
    labels = None
    for _ in range(iters):
        new_labels, d = assign(x, centroids, metric, chunk_size)
        changed = len(x) if labels is None else int((new_labels != labels).sum())
        labels = new_labels
        k = len(centroids)
        # per-cluster [sum of x | count | distance] in float64; bincount adds in item order on one thread
        cols = [np.bincount(labels, weights=x[:, j], minlength=k) for j in range(x.shape[1])]
        cols += [np.bincount(labels, minlength=k).astype(np.float64), np.bincount(labels, weights=d, minlength=k)]
        sums = np.stack(cols, axis=1)
        tot = comm.sum(np.concatenate([sums.ravel(), [float(changed)]]))
        changed_all, tot = tot[-1], tot[:-1].reshape(sums.shape)
        objective.append(float(tot[:, -1].sum() / n_total))
        if changed_all == 0:
            break
        counts = tot[:, -2]
        full = counts > 0
        means = tot[full, :-2] / counts[full, None]
        if metric == "cosine":
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        centroids = centroids.copy()
        centroids[full] = means.astype(np.float32)
    return centroids, objective


def kmeans(
    x: np.ndarray,
    k: int,
    iters: int,
    metric: Metric,
    seed: int,
    comm: Comm = SINGLE,
    init: Literal["kmeans++", "random"] = "kmeans++",
    chunk_size: int = 65536,
) -> tuple[np.ndarray, list[float]]:
    """Seeding (greedy k-means++, or k distinct items drawn uniformly) + Lloyd over every rank's float32 slice `x`
    (normalised for cosine): centroids and objective history."""
    if init == "kmeans++":
        centres = kmeans_pp(x, k, metric, seed, comm)
    else:  # k distinct items drawn uniformly
        sizes = comm.gather_scalars(float(len(x))).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        chosen = np.sort(np.random.default_rng(seed).choice(int(offsets[-1]), k, replace=False))
        mine = chosen[(chosen >= offsets[comm.rank]) & (chosen < offsets[comm.rank + 1])] - offsets[comm.rank]
        buf = np.zeros((k, x.shape[1]), dtype=np.float64)
        buf[np.searchsorted(chosen, mine + offsets[comm.rank])] = x[mine]
        centres = comm.sum(buf).astype(np.float32)
    return lloyd(x, centres, iters, metric, comm, chunk_size)
