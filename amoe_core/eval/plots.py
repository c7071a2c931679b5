"""Cross-resolution outputs: a tidy CSV (for `dvc plots`) and a PNG of kNN accuracy vs input resolution."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from amoe_core.io import atomic_path, atomic_write_text  # noqa: E402
from amoe_core.tracking.eval_record import KNN, rows  # noqa: E402

CSV_COLUMNS = ["dataset", "feature", "resolution", "k", "accuracy"]


def resolution_rows(knn: dict[str, Any]) -> list[dict[str, Any]]:
    """eval.json's "knn" block -> one row per (dataset, feature, resolution, k), sorted."""
    out = [
        {**{c: r[c] for c in ("dataset", "feature", "resolution")}, "k": int(r["metric"][1:]), "accuracy": r["value"]}
        for r in rows({KNN: knn}, KNN)
    ]
    return sorted(out, key=lambda r: (r["dataset"], r["feature"], r["k"], r["resolution"]))


def write_resolution_csv(knn: dict[str, Any], path: str | Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(resolution_rows(knn))
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def plot_resolution(knn: dict[str, Any], k: int, path: str | Path) -> Path:
    """One panel per dataset, one line per feature: accuracy at `k` neighbours vs resolution (px)."""
    points = [r for r in resolution_rows(knn) if r["k"] == k]
    datasets = sorted({r["dataset"] for r in points})
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.5 * max(1, len(datasets)), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for feature in sorted({r["feature"] for r in points if r["dataset"] == dataset}):
            pts = [
                (r["resolution"], r["accuracy"]) for r in points if r["dataset"] == dataset and r["feature"] == feature
            ]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=feature)
        ax.set_title(f"{dataset}: kNN (k={k}) vs resolution")
        ax.set_xlabel("input resolution (px)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
