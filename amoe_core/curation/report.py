"""The curation report (report.json): cluster sizes and source shares before and after sampling, and per concept
(`concepts`, amoe_core/curation/concepts.py) when every pool image carries a label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from amoe_core.config.sample import SampleConfig
from amoe_core.curation.concepts import concept_report

REPORT_FILE = "report.json"  # in sample.out, beside the selections


def size_stats(sizes: np.ndarray) -> dict[str, float]:
    """Summary of a cluster-size distribution. `balance` is the normalised entropy of the sizes (1 = all equal)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    p = sizes[sizes > 0] / max(sizes.sum(), 1)
    entropy = float(-(p * np.log(p)).sum())
    return {
        "clusters": int(len(sizes)),
        "non_empty": int((sizes > 0).sum()),
        "min": float(sizes.min()),
        "median": float(np.median(sizes)),
        "p90": float(np.quantile(sizes, 0.9)),
        "max": float(sizes.max()),
        "balance": entropy / np.log(len(sizes)) if len(sizes) > 1 else 1.0,
    }


def source_shares(sources: pd.Series) -> dict[str, float]:
    counts = sources.fillna("unknown").value_counts()
    return {str(k): float(v) / len(sources) for k, v in counts.sort_index().items()}


def cluster_sizes(paths: np.ndarray, level: int, idx: np.ndarray | None = None) -> np.ndarray:
    """Points per cluster at `level` (0-based column of `paths`), over all points or over the subset `idx`."""
    k = int(paths[:, level].max()) + 1
    col = paths[:, level] if idx is None else paths[idx, level]
    return np.bincount(col, minlength=k)


def build_report(rows: pd.DataFrame, paths: np.ndarray, selections: dict[str, np.ndarray], cfg: SampleConfig) -> dict:
    """Cluster-size distributions before/after at every level, source shares and top-level coverage.

    Mappings of {label: number} (one level deep at most) are what the dashboard charts, hence the layout.
    """
    top = paths.shape[1] - 1
    shares = {"pool": source_shares(rows["source"])}
    shares.update({name: source_shares(rows["source"].iloc[idx]) for name, idx in selections.items()})
    largest = max(shares["pool"], key=shares["pool"].get)
    top_sizes = cluster_sizes(paths, top)
    levels = []
    for level in range(paths.shape[1]):
        before = cluster_sizes(paths, level)
        entry = {"level": level + 1, "pool": size_stats(before[before > 0])}
        for name, idx in selections.items():
            entry[name] = size_stats(cluster_sizes(paths, level, idx)[before > 0])
        levels.append(entry)
    report = {
        "pool_images": len(rows),
        "target": cfg.target,
        "within": cfg.within,
        "largest_source": largest,
        "source_shares": shares,
        "largest_source_share": {name: s.get(largest, 0.0) for name, s in shares.items()},
        "top_level_clusters_represented": {
            "pool": int((top_sizes > 0).sum()),
            **{name: int(len(np.unique(paths[idx, top]))) for name, idx in selections.items()},
        },
        "level1_cluster_balance": {name: levels[0][name]["balance"] for name in ["pool", *selections]},
        "levels": levels,
    }
    if "label" in rows and rows["label"].notna().all():  # every image has a concept (the demo pool's folder names)
        concepts = concept_report(rows["label"], paths[:, 0], selections)
        # the headline numbers at the top (the dashboard charts {label: number} mappings), the detail beside them
        for key in ("head_share", "tail_half_share", "level1_clusters_vs_size_slope"):
            report[f"concept_{key}"] = concepts.pop(key)
        report["concepts"] = concepts
    return report
