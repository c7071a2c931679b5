"""Hierarchical k-means with resampling (Vo et al. 2024, "Automatic Data Curation for Self-Supervised Learning: A
Clustering-Based Approach", Sec. 4 / Alg. 1), reimplemented from the paper and the semantics of its reference
configuration (facebookresearch/ssl-data-curation), on one or many processes.

Level 1 clusters the embeddings; level l clusters the centroids of level l-1, so every level above the first is
small. Each level runs `resampling_steps` k-means, numbered from 0:
  step 0     k-means (k-means++ seeding, then Lloyd) on all items (level 1: a random subset of at most
             k * max_points_per_centroid of them), then every item is assigned to its nearest centroid;
  step s > 0 take `sample_size` items per cluster of step s-1 (`sampling_strategy`: the closest to the centroid, or
             at random), run a NEW k-means on that sample (fresh k-means++ seeding, not the current centroids: from
             those it would converge straight back), and reassign every item.
Sampling the same number of items from every cluster gives a dense region as much weight as a sparse one, so the
next k-means spreads its centroids over concepts instead of following density, which is what balanced sampling
needs. As in the reference, `resampling_steps = 1` or `sample_size <= 1` means no resampling at that level.

Many processes (`torchrun --nproc-per-node N -m amoe_core.cli curate cluster`, or `amoe submit cluster` with N tasks):
each rank reads only its contiguous slice of the items (from the float16 memmap, chunk by chunk), assigns it and
contributes partial sums; seeding, Lloyd updates and resampling picks are combined over ranks (see
`amoe_core.curation.kmeans`); the result equals the 1-process run up to float summation order. Only rank 0 writes.
Cosine uses spherical k-means on L2-normalised vectors; faiss GPU indexes are used when `faiss.get_num_gpus() > 0`.

On-disk layout of `cluster.out` (written to a temporary directory and swapped in whole):
  level{i}/centroids.npy   [k_i, d] float32
  level{i}/assignment.npy  [n_items] int32: for level 1 one entry per embedded image (manifest order), for level
                           i > 1 one entry per level-(i-1) centroid
  meta.json                metric, count, dim, k per level, world_size (processes that computed it), objectives
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch.distributed as dist

from amoe_core.config.cluster import ClusterConfig
from amoe_core.curation.kmeans import (
    SINGLE,
    Comm,
    Metric,
    assign,
    gather,
    hash_scores,
    kmeans,
    pick_lowest,
    use_gpu,
)
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_dir, atomic_write_json
from amoe_core.launch.distributed import barrier, cleanup_distributed, init_distributed
from amoe_core.launch.local_ranks import run_local_ranks

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)


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


def resamples(steps: int, sample_size: int) -> bool:
    """The reference's rule: step 0 is the first k-means; a sample of <= 1 item per cluster is no resampling."""
    return steps > 1 and sample_size > 1


def cluster_level(
    x: np.ndarray,
    k: int,
    iters: int,
    steps: int,
    sample_size: int,
    strategy: str,
    metric: Metric,
    seed: int,
    comm: Comm = SINGLE,
    chunk_size: int = 65536,
    max_points_per_centroid: int = 256,
    init: str = "kmeans++",
) -> Level:
    """k-means + resampling steps over the rows of `x` (a float16/32 array or memmap, the same on every rank; each
    rank reads only its slice) and the full assignment (on every rank)."""
    n = x.shape[0]
    lo, hi = comm.part(n)
    mine = x[lo:hi]  # a view: read chunk by chunk
    index = np.arange(lo, hi)
    train = np.arange(n)
    if n > k * max_points_per_centroid:  # train on a random subset, like faiss, without copying all of x
        train = np.sort(np.random.default_rng(seed).choice(n, k * max_points_per_centroid, replace=False))
    train = train[(train >= lo) & (train < hi)]
    centroids, objective = kmeans(gather(x, train, metric, chunk_size), k, iters, metric, seed, comm, init, chunk_size)
    labels, dist = assign(mine, centroids, metric, chunk_size)
    history: list[float] = []
    for step in range(1, steps if resamples(steps, sample_size) else 1):
        scores = dist if strategy == "closest" else hash_scores(index, seed * 7919 + step)
        sample = pick_lowest(labels, scores, index, sample_size, k, comm)
        sample = sample[(sample >= lo) & (sample < hi)]
        centroids, _ = kmeans(
            gather(x, sample, metric, chunk_size), k, iters, metric, seed + step, comm, init, chunk_size
        )
        labels, dist = assign(mine, centroids, metric, chunk_size)
        history.append(float(comm.sum(np.array([dist.sum(dtype=np.float64)]))[0] / n))
    return Level(centroids, comm.concat(labels), objective, history)


def hierarchical_kmeans(
    x: np.ndarray,
    ks: list[int],
    iters: int,
    resampling_steps: list[int],
    sample_sizes: list[int],
    strategy: str = "closest",
    metric: Metric = "cosine",
    seed: int = 0,
    comm: Comm = SINGLE,
    chunk_size: int = 65536,
    max_points_per_centroid: int = 256,
    init: str = "kmeans++",
) -> list[Level]:
    """All levels, bottom-up. `x` [n, d] may be a float16 memmap; each rank only reads its slice, chunk by chunk."""
    if not (len(ks) == len(resampling_steps) == len(sample_sizes)):
        raise AmoeError(
            f"need one k, resampling step count and sample size per level, got {ks}, {resampling_steps}, {sample_sizes}"
        )
    check_levels(x.shape[0], ks)
    levels: list[Level] = []
    items = x
    for i, k in enumerate(ks):
        log.info("level %d: k-means of %d items into %d clusters", i + 1, items.shape[0], k)
        level = cluster_level(
            items, k, iters, resampling_steps[i], sample_sizes[i], strategy, metric, seed + 1000 * i, comm,
            chunk_size, max_points_per_centroid, init,
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
    """`amoe curate cluster`: embeddings -> hierarchical clusters under `cluster.out`, on every process of the
    torch.distributed group when there is one (torchrun, a multi-task submitit job); rank 0 writes."""
    cfg: ClusterConfig = params.cluster
    x, emb_meta = load_embeddings(Path(cfg.embeddings))
    check_levels(x.shape[0], cfg.k)
    if run_local_ranks(["curate", "cluster"], params, cfg.processes):
        return Path(cfg.out)
    started_here = not dist.is_initialized() and init_distributed().world_size > 1
    try:
        comm = Comm.current()
        levels = hierarchical_kmeans(
            x, cfg.k, cfg.iters, cfg.resampling_steps, cfg.sample_size, cfg.sampling_strategy, cfg.metric,
            params.seed, comm, cfg.chunk_size, cfg.max_points_per_centroid, cfg.init,
        )  # fmt: skip
        if comm.rank == 0:
            meta = {
                "metric": cfg.metric,
                "count": int(x.shape[0]),
                "dim": int(x.shape[1]),
                "encoder": emb_meta.get("encoder"),
                "seed": params.seed,
                "gpu": use_gpu(),
                "world_size": comm.world,
            }
            write_levels(Path(cfg.out), levels, meta)
            log.info("clusters written to %s (k per level %s, %d processes)", cfg.out, cfg.k, comm.world)
        barrier()  # no rank returns before the output exists
    finally:
        if started_here:
            cleanup_distributed()
    return Path(cfg.out)
