"""Hierarchical balanced sampling (Vo et al. 2024, Sec. 4.2 / Alg. 2) and a random baseline of the same size.

The target is split over the top-level clusters by water-filling: every cluster gets min(size, cut), with the cut
chosen so that the total hits the target, so small concepts are kept whole and large ones are capped. Each
cluster's share is split the same way over its children one level down, recursively, and inside a level-1 cluster
the points are taken at random or closest to the centroid. Everything is deterministic for a seed.

Outputs (`sample.out`, swapped in whole): balanced.parquet and random.parquet (key, source, label, level1..levelL,
in manifest order) and report.json; plots go to `sample.plots` (see `amoe_core.curation.plots`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from amoe_core.config.sample import SampleConfig
from amoe_core.curation.hkmeans import load_embeddings, load_levels, point_paths
from amoe_core.curation.kmeans import assign, per_cluster_pick
from amoe_core.curation.plots import write_plots
from amoe_core.curation.report import REPORT_FILE, build_report
from amoe_core.data.shards import read_manifest
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_dir, atomic_write_json

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Integer counts n_i <= sizes_i summing to min(target, sum(sizes)) with n_i = min(size_i, cut).

    The cut c is the largest integer with sum(min(s, c)) <= target; the remainder (fewer than the clusters larger
    than c) gives one more point to that many of them, chosen at random with `rng`, else the first ones. This is the
    most balanced allocation: it minimises sum(n_i^2) under the constraints.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if target >= sizes.sum():
        return sizes.copy()
    lo, hi = 0, int(sizes.max())  # f(c) = sum(min(s, c)) is non-decreasing; f(lo) <= target < f(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid
    counts = np.minimum(sizes, lo)
    remainder = int(target - counts.sum())
    if remainder:
        eligible = np.flatnonzero(sizes > lo)
        chosen = rng.choice(eligible, remainder, replace=False) if rng is not None else eligible[:remainder]
        counts[chosen] += 1
    return counts


def balanced_sample(
    paths: np.ndarray,
    target: int,
    seed: int = 0,
    within: str = "random",
    dist: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted indices of `target` points chosen by hierarchical water-filling over `paths` [n, L] (level-1..L
    cluster ids per point). `within="closest"` takes the points nearest their level-1 centroid (needs `dist`)."""
    n, n_levels = paths.shape
    if target > n:
        raise AmoeError(f"sample.target = {target} exceeds the {n} embedded images; lower it")
    if within == "closest" and dist is None:
        raise ValueError("within='closest' needs the distance of every point to its level-1 centroid")
    rng = np.random.default_rng(seed)
    groups: list[tuple[np.ndarray, int]] = [(np.arange(n), target)]  # (point indices, share), one per cluster
    for level in range(n_levels - 1, -1, -1):  # top level down to level 1
        next_groups: list[tuple[np.ndarray, int]] = []
        for idx, share in groups:
            ids, inverse, sizes = np.unique(paths[idx, level], return_inverse=True, return_counts=True)
            counts = water_fill(sizes, share, rng)
            order = np.argsort(inverse, kind="stable")
            for child, members in enumerate(np.split(idx[order], np.cumsum(sizes)[:-1])):
                if counts[child]:
                    next_groups.append((members, int(counts[child])))
        groups = next_groups
    # groups now hold level-1 clusters and their shares: pick inside each one
    leaf = np.full(n, -1, dtype=np.int64)
    for g, (members, _) in enumerate(groups):
        leaf[members] = g
    inside = np.flatnonzero(leaf >= 0)
    scores = dist[inside] if within == "closest" else rng.random(len(inside))
    shares = np.array([share for _, share in groups], dtype=np.int64)
    picked = inside[per_cluster_pick(leaf[inside], scores, shares, len(groups))]
    assert len(picked) == target, (len(picked), target)
    return picked


def random_sample(n: int, target: int, seed: int = 0) -> np.ndarray:
    """The baseline: `target` points uniformly at random without replacement, sorted."""
    if target > n:
        raise AmoeError(f"sample.target = {target} exceeds the {n} embedded images; lower it")
    return np.sort(np.random.default_rng(seed + 1).choice(n, target, replace=False))


# ------------------------------------------------------------------------------------------------------ stage
def load_pool(cfg: SampleConfig) -> tuple[pd.DataFrame, np.ndarray, list[np.ndarray], dict]:
    """Manifest rows in embedding order, per-point cluster paths [n, L], level centroids, clusters meta; checks
    that embeddings, clusters and manifest describe the same images."""
    manifest = read_manifest(Path(cfg.shards), "sample.shards")
    assignments, centroids, meta = load_levels(Path(cfg.clusters))
    keys_path = Path(cfg.embeddings) / "keys.parquet"
    if not keys_path.exists():
        raise AmoeError(f"sample.embeddings = {str(cfg.embeddings)!r} has no keys.parquet; run `amoe curate embed`")
    keys = pd.read_parquet(keys_path)["key"]
    if len(assignments[0]) != len(keys):
        raise AmoeError(
            f"clusters in {cfg.clusters} cover {len(assignments[0])} images but {keys_path} lists {len(keys)}; "
            f"re-run `amoe curate cluster` on these embeddings"
        )
    rows = manifest.set_index("key").reindex(keys.to_numpy())
    missing = rows["shard"].isna().to_numpy()
    if missing.any() or len(keys) != len(manifest):
        example = keys[missing].iloc[0] if missing.any() else "(count differs)"
        raise AmoeError(
            f"embeddings ({len(keys)} keys) do not match the manifest of {cfg.shards} ({len(manifest)} rows, e.g. "
            f"{example!r} is missing); re-run `amoe curate embed` on this shard set"
        )
    return rows.reset_index(), point_paths(assignments), centroids, meta


def selection_frame(rows: pd.DataFrame, paths: np.ndarray, idx: np.ndarray) -> pd.DataFrame:
    cols = {"key": rows["key"].to_numpy()[idx], "source": rows["source"].to_numpy()[idx]}
    cols["label"] = rows["label"].to_numpy()[idx] if "label" in rows else None
    for level in range(paths.shape[1]):
        cols[f"level{level + 1}"] = paths[idx, level]
    return pd.DataFrame(cols)


def run(params: Params) -> Path:
    """`amoe curate sample`: balanced + random selections of `sample.target` images, report and plots."""
    cfg: SampleConfig = params.sample
    rows, paths, centroids, meta = load_pool(cfg)
    n = len(rows)
    if cfg.target > n:
        raise AmoeError(f"sample.target = {cfg.target} exceeds the {n} embedded images; lower it")
    dist = None
    if cfg.within == "closest":
        x, _ = load_embeddings(Path(cfg.embeddings), "sample.embeddings")
        _, dist = assign(x, centroids[0], meta.get("metric", "cosine"))
    balanced = balanced_sample(paths, cfg.target, params.seed, cfg.within, dist)
    baseline = random_sample(n, cfg.target, params.seed)
    report = build_report(rows, paths, {"balanced": balanced, "random": baseline}, cfg)
    with atomic_dir(cfg.out, "sample.out", legacy=(REPORT_FILE, "balanced.parquet")) as tmp:
        selection_frame(rows, paths, balanced).to_parquet(tmp / "balanced.parquet", index=False)
        selection_frame(rows, paths, baseline).to_parquet(tmp / "random.parquet", index=False)
        atomic_write_json(tmp / REPORT_FILE, report)
    write_plots(cfg, rows, paths, {"balanced": balanced, "random": baseline})
    log.info("selected %d of %d images into %s", cfg.target, n, cfg.out)
    return Path(cfg.out)
