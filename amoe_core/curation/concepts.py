"""Did balancing do what it should, per concept? Needs each pool image's concept (the manifest's `label`: the demo
pool's folder name, see amoe_core/data/demo_longtail.py).

- the share of the head concept (the pool's most frequent) and of the tail half (the least frequent half of the
  concepts) in the pool and in each selection: balancing should lower the first and raise the second;
- level-1 clusters per concept (each cluster counted for the concept most of its images belong to) and the slope
  of log clusters against log concept size over the concepts owning a cluster. Plain k-means spends centroids in
  proportion to density (slope near 1); Vo et al. 2024 resample so that clusters spread evenly over concepts (slope
  below 1, 0 = one cluster per concept whatever its size).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def head_and_tail(labels: pd.Series) -> tuple[str, list[str]]:
    """The most frequent concept and the least frequent half of the concepts (ties broken by name)."""
    counts = labels.value_counts()
    ordered = sorted(counts.index, key=lambda c: (-counts[c], str(c)))
    return str(ordered[0]), [str(c) for c in ordered[len(ordered) - len(ordered) // 2 :]]


def clusters_per_concept(labels: pd.Series, level1: np.ndarray) -> dict[str, int]:
    """Level-1 clusters whose majority concept is each concept (0 for a concept that owns none)."""
    frame = pd.DataFrame({"cluster": np.asarray(level1), "concept": labels.astype(str).to_numpy()})
    counts = frame.groupby(["cluster", "concept"]).size().reset_index(name="n")
    owners = counts.sort_values(["cluster", "n", "concept"], ascending=[True, False, True]).drop_duplicates("cluster")
    owned = owners["concept"].value_counts()
    return {str(c): int(owned.get(c, 0)) for c in sorted(frame["concept"].unique())}


def log_slope(sizes: dict[str, int], clusters: dict[str, int]) -> float | None:
    """Least-squares slope of log(clusters) on log(size) over concepts owning >= 1 cluster; None with < 2 sizes."""
    pts = [(np.log(sizes[c]), np.log(n)) for c, n in clusters.items() if n > 0 and sizes.get(c, 0) > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def concept_report(labels: pd.Series, level1: np.ndarray, selections: dict[str, np.ndarray]) -> dict:
    """Head / tail-half shares in the pool and each selection, clusters per concept and their log-log slope."""
    labels = labels.astype(str).reset_index(drop=True)
    head, tail = head_and_tail(labels)
    sets = {"pool": labels, **{name: labels.iloc[idx] for name, idx in selections.items()}}
    sizes = {str(c): int(n) for c, n in labels.value_counts().items()}
    clusters = clusters_per_concept(labels, level1)
    return {
        "concepts": len(sizes),
        "head": head,
        "tail_half": tail,
        "head_share": {name: float((s == head).mean()) for name, s in sets.items()},
        "tail_half_share": {name: float(s.isin(tail).mean()) for name, s in sets.items()},
        "concept_sizes": dict(sorted(sizes.items())),
        "level1_clusters_per_concept": clusters,
        "level1_clusters_vs_size_slope": log_slope(sizes, clusters),
    }
