"""Hierarchical k-means with resampling (Vo et al. 2024, "Automatic Data Curation for Self-Supervised Learning: A
Clustering-Based Approach", Sec. 4 / Alg. 1), reimplemented from the paper's description on top of faiss.

Level 1 clusters the embeddings; level l clusters the centroids of level l-1, so every level above the first is
small. After each level's k-means, `resample_steps` resampling steps take `resample_points` points per cluster
(closest to the centroid, or at random), re-run k-means on that sample from the current centroids and reassign every
item. Resampling pulls centroids away from dense regions, towards a more uniform cover of the data, which is what
balanced sampling needs.

Memory stays near one copy of the embeddings: level 1 trains on at most `k * max_points_per_centroid` points (faiss
would subsample to that anyway) and assigns all points chunk by chunk straight from the float16 memmap.
Cosine uses spherical k-means on L2-normalised vectors; GPU indexes are used when `faiss.get_num_gpus() > 0`.

On-disk layout of `cluster.out` (written to a temporary directory and swapped in whole):
  level{i}/centroids.npy   [k_i, d] float32
  level{i}/assignment.npy  [n_items] int32: for level 1 one entry per embedded image (manifest order), for level
                           i > 1 one entry per level-(i-1) centroid
  meta.json                metric, count, dim, k per level, objective histories
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from amoe_core.config import ClusterConfig, Params
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

Metric = Literal["cosine", "l2"]
INIT_METHODS = {
    "random": faiss.ClusteringInitMethod_RANDOM,
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
    "afkmc2": faiss.ClusteringInitMethod_AFK_MC2,
}


@dataclass
class Level:
    """One level of the hierarchy."""

    centroids: np.ndarray  # [k, d] float32 (unit norm for cosine)
    assignment: np.ndarray  # [n_items] int32
    objective: list[float]  # mean squared distance item -> centroid after each iteration of the first k-means
    resample_objective: list[float] = field(default_factory=list)  # the same after each resampling step

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


# ------------------------------------------------------------------------------------------------------ primitives
def use_gpu() -> bool:
    return faiss.get_num_gpus() > 0


def as_float32(x: np.ndarray, metric: Metric) -> np.ndarray:
    """Rows of `x` as float32, normalised to unit length for cosine (a copy); for L2 float32 input is not copied."""
    if metric == "l2":
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.array(x, dtype=np.float32, copy=True)
    faiss.normalize_L2(out)
    return out


def _flat_index(d: int, metric: Metric) -> faiss.Index:
    index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    return faiss.index_cpu_to_all_gpus(index) if use_gpu() else index


def _to_sqdist(values: np.ndarray, metric: Metric) -> np.ndarray:
    """faiss returns inner products for cosine; between unit vectors ||x - c||^2 = 2 - 2 <x, c>."""
    return np.maximum(2.0 - 2.0 * values, 0.0) if metric == "cosine" else values


def kmeans(
    x: np.ndarray,
    k: int,
    iters: int,
    metric: Metric,
    seed: int,
    init: np.ndarray | None = None,
    init_method: str = "random",
) -> tuple[np.ndarray, list[float]]:
    """faiss k-means on float32 `x` (already normalised for cosine): centroids and the mean squared distance per
    iteration (faiss reports a sum of inner products for spherical k-means; converted so that lower is better)."""
    n, d = x.shape
    km = faiss.Kmeans(
        d,
        k,
        niter=iters,
        seed=seed,
        spherical=metric == "cosine",
        gpu=use_gpu(),
        max_points_per_centroid=max(1, -(-n // k)),  # callers subsample; never let faiss drop more points
        min_points_per_centroid=1,
        init_method=INIT_METHODS[init_method],
        verbose=False,
    )
    km.train(x, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    objective = _to_sqdist(np.asarray(km.obj, dtype=np.float64) / n, metric).tolist()
    return np.ascontiguousarray(km.centroids, dtype=np.float32), objective


def assign(
    x: np.ndarray, centroids: np.ndarray, metric: Metric, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of `x` (any float dtype, e.g. a float16 memmap), chunk by chunk so only one
    chunk is ever copied to float32. Returns (labels int32 [n], squared distances float32 [n])."""
    index = _flat_index(centroids.shape[1], metric)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    dist = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        chunk = as_float32(x[start : start + chunk_size], metric)
        d, i = index.search(chunk, 1)
        labels[start : start + len(chunk)] = i[:, 0]
        dist[start : start + len(chunk)] = _to_sqdist(d[:, 0], metric)
    return labels, dist


def per_cluster_pick(labels: np.ndarray, scores: np.ndarray, per_cluster: int | np.ndarray, k: int) -> np.ndarray:
    """Indices of the `per_cluster` lowest-score items of every cluster (all of a smaller cluster); sorted.

    `per_cluster` is one count for all clusters or an array of k counts. Random picks pass random scores.
    """
    order = np.lexsort((scores, labels))  # by cluster, then by score
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(k), side="left")
    rank = np.arange(len(order)) - starts[sorted_labels]  # position of each item inside its cluster
    quota = np.broadcast_to(np.asarray(per_cluster), (k,))
    return np.sort(order[rank < quota[sorted_labels]])


def resample_indices(
    labels: np.ndarray, dist: np.ndarray, k: int, points: int, method: str, rng: np.random.Generator
) -> np.ndarray:
    """The resampling set of Vo et al.: `points` items per cluster, closest to the centroid or random. When empty
    clusters leave fewer than k items, random extra items top it up (k-means needs at least k points)."""
    scores = dist if method == "closest" else rng.random(len(labels))
    picked = per_cluster_pick(labels, scores, points, k)
    if len(picked) < k:
        rest = np.setdiff1d(np.arange(len(labels)), picked)
        picked = np.sort(np.concatenate([picked, rng.choice(rest, k - len(picked), replace=False)]))
    return picked


# ------------------------------------------------------------------------------------------------------ hierarchy
def check_levels(n: int, ks: list[int]) -> None:
    """One clear error before any work when a level asks for more clusters than it has items."""
    items, what = n, "embedded images"
    for i, k in enumerate(ks):
        if k > items:
            raise AmoeError(
                f"cluster.k[{i}] = {k} but level {i + 1} has only {items} {what} to cluster; "
                f"lower cluster.k (each level needs k <= its number of items)"
            )
        items, what = k, f"level-{i + 1} centroids"


def cluster_level(
    x: np.ndarray,
    k: int,
    iters: int,
    steps: int,
    points: int,
    method: str,
    metric: Metric,
    seed: int,
    chunk_size: int = 65536,
    max_points_per_centroid: int = 256,
    init_method: str = "random",
) -> Level:
    """k-means (+ resampling steps) over the rows of `x` (a float16/32 array or memmap) and a full assignment."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    if n > k * max_points_per_centroid:  # train on a random subset, like faiss, without copying all of x
        train_idx = np.sort(rng.choice(n, k * max_points_per_centroid, replace=False))
        train = as_float32(x[train_idx], metric)
    else:
        train = as_float32(x[:], metric)
    centroids, objective = kmeans(train, k, iters, metric, seed, init_method=init_method)
    del train
    labels, dist = assign(x, centroids, metric, chunk_size)
    level = Level(centroids, labels, objective)
    for step in range(steps):
        idx = resample_indices(labels, dist, k, points, method, rng)
        centroids, _ = kmeans(as_float32(x[idx], metric), k, iters, metric, seed + step + 1, init=centroids)
        labels, dist = assign(x, centroids, metric, chunk_size)
        level = Level(centroids, labels, objective, level.resample_objective + [float(dist.mean())])
    return level


def hierarchical_kmeans(
    x: np.ndarray,
    ks: list[int],
    iters: int,
    resample_steps: list[int],
    resample_points: list[int],
    method: str = "closest",
    metric: Metric = "cosine",
    seed: int = 0,
    chunk_size: int = 65536,
    max_points_per_centroid: int = 256,
    init_method: str = "random",
) -> list[Level]:
    """All levels, bottom-up. `x` [n, d] may be a float16 memmap; it is only read chunk by chunk."""
    if not (len(ks) == len(resample_steps) == len(resample_points)):
        raise AmoeError(
            f"need one k, resample step count and point count per level, got {ks}, {resample_steps}, {resample_points}"
        )
    check_levels(x.shape[0], ks)
    levels: list[Level] = []
    items = x
    for i, k in enumerate(ks):
        log.info("level %d: k-means of %d items into %d clusters", i + 1, items.shape[0], k)
        level = cluster_level(
            items, k, iters, resample_steps[i], resample_points[i], method, metric, seed + 1000 * i, chunk_size,
            max_points_per_centroid, init_method,
        )  # fmt: skip
        levels.append(level)
        items = level.centroids
    return levels


def point_paths(assignments: list[np.ndarray]) -> np.ndarray:
    """[n_points, L] cluster id of every point at every level, composed from the per-level assignments."""
    paths = np.empty((len(assignments[0]), len(assignments)), dtype=np.int32)
    paths[:, 0] = assignments[0]
    for level in range(1, len(assignments)):
        paths[:, level] = assignments[level][paths[:, level - 1]]
    return paths


# ------------------------------------------------------------------------------------------------------ files
def load_embeddings(directory: Path, field_name: str = "cluster.embeddings") -> tuple[np.ndarray, dict]:
    """The embed stage's output: a read-only float16 memmap [n, d] and its meta.json."""
    import json

    require_path(field_name, directory, "embeddings directory")
    meta_path, emb_path = directory / "meta.json", directory / "embeddings.npy"
    if not meta_path.exists() or not emb_path.exists():
        raise AmoeError(f"{field_name} = {str(directory)!r} holds no complete embeddings (meta.json + embeddings.npy); "
                        f"run `amoe curate embed` (it resumes if it was interrupted)")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    x = np.load(emb_path, mmap_mode="r")
    if x.ndim != 2 or x.shape[0] != meta.get("count") or x.shape[1] != meta.get("dim"):
        raise AmoeError(f"{emb_path}: shape {x.shape} does not match meta.json (count {meta.get('count')}, dim "
                        f"{meta.get('dim')}); re-run `amoe curate embed`")  # fmt: skip
    return x, meta


def load_levels(
    directory: Path, field_name: str = "sample.clusters"
) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Per-level (assignments, centroids) and meta.json of a `cluster` output directory."""
    import json

    require_path(field_name, directory, "clusters directory")
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise AmoeError(f"{field_name} = {str(directory)!r} has no meta.json; run `amoe curate cluster`")
    meta = json.loads(meta_path.read_text())
    assignments, centroids = [], []
    for i in range(1, len(meta["k"]) + 1):
        assignments.append(np.load(directory / f"level{i}" / "assignment.npy"))
        centroids.append(np.load(directory / f"level{i}" / "centroids.npy"))
    return assignments, centroids, meta


def write_levels(out: Path, levels: list[Level], meta: dict) -> None:
    with atomic_dir(out, "cluster.out", legacy=("meta.json", "level1")) as tmp:
        for i, level in enumerate(levels, start=1):
            (tmp / f"level{i}").mkdir()
            np.save(tmp / f"level{i}" / "centroids.npy", level.centroids)
            np.save(tmp / f"level{i}" / "assignment.npy", level.assignment.astype(np.int32))
        levels_meta = [
            {
                "k": lv.k,
                "items": int(len(lv.assignment)),
                "non_empty": int(len(np.unique(lv.assignment))),
                "objective": lv.objective,
                "resample_objective": lv.resample_objective,
            }
            for lv in levels
        ]
        atomic_write_json(tmp / "meta.json", {**meta, "k": [lv.k for lv in levels], "levels": levels_meta})


def run(params: Params) -> Path:
    """`amoe curate cluster`: embeddings -> hierarchical clusters under `cluster.out`."""
    cfg: ClusterConfig = params.cluster
    x, emb_meta = load_embeddings(Path(cfg.embeddings))
    check_levels(x.shape[0], cfg.k)
    levels = hierarchical_kmeans(
        x, cfg.k, cfg.iters, cfg.resample_steps, cfg.resample_points, cfg.resample_method, cfg.metric, params.seed,
        cfg.chunk_size, cfg.max_points_per_centroid, cfg.init,
    )  # fmt: skip
    meta = {
        "metric": cfg.metric,
        "count": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "encoder": emb_meta.get("encoder"),
        "seed": params.seed,
        "gpu": use_gpu(),
    }
    write_levels(Path(cfg.out), levels, meta)
    log.info("clusters written to %s (k per level %s)", cfg.out, cfg.k)
    return Path(cfg.out)
