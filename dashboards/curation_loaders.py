"""Read the curation report (data/curation/selection/report.json) into what the dashboard's curation view shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

# What the curation report's numbers mean (amoe_core/curation/report.py computes them); shown beside them.
CURATION_TERMS = {
    "pool_images": "images in the shard set that curation chose from",
    "target": "images each selection keeps (sample.target)",
    "within": "how a cluster's quota is filled at the lowest level (sample.within)",
    "largest_source": "the source with the largest share of the pool",
    "source_shares": "fraction of each selection's images from each source",
    "largest_source_share": "share of the pool's largest source in each selection (balancing should lower it)",
    "top_level_clusters_represented": "top-level k-means clusters with at least one selected image",
    "level1_cluster_balance": (
        "balance = normalised entropy of the level-1 cluster sizes: 1 when every cluster holds the same number of "
        "images, towards 0 when a few clusters hold almost all of them"
    ),
}


def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def numeric_mapping(value: Any) -> dict[str, float] | None:
    """A {label: number} mapping (e.g. source shares), or None when `value` is not one."""
    if isinstance(value, dict) and value and all(isinstance(v, int | float) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}
    return None


def report_sections(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, Any]]:
    """Split a report.json into scalars, chartable {label: number} frames (also one level down) and the rest.

    The curation report's exact keys belong to the curation stage; the dashboard shows whatever it holds.
    """
    scalars: dict[str, Any] = {}
    frames: dict[str, pd.DataFrame] = {}
    other: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, int | float | str | bool) or value is None:
            scalars[key] = value
        elif (m := numeric_mapping(value)) is not None:
            frames[key] = pd.DataFrame({"label": list(m), "value": list(m.values()), "group": key})
        elif isinstance(value, dict) and value and all(numeric_mapping(v) is not None for v in value.values()):
            frames[key] = pd.concat(
                [
                    pd.DataFrame({"label": list(m), "value": list(m.values()), "group": str(g)})
                    for g, v in value.items()
                    if (m := numeric_mapping(v)) is not None
                ],
                ignore_index=True,
            )
        elif isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            frames[key] = pd.DataFrame({"label": range(len(value)), "value": value, "group": key})
        else:
            other[key] = value
    return scalars, frames, other
