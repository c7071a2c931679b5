"""The report's figures: PNGs written next to docs/RESULTS.md, byte-identical for the same runs (no timestamps)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from amoe_core.experiments.data_scaling import Point  # noqa: E402
from amoe_core.io import atomic_path  # noqa: E402
from amoe_core.tracking.eval_record import value  # noqa: E402
from amoe_core.tracking.palette import variant_colours  # noqa: E402
from amoe_core.tracking.variants import Variant, evaluated_resolutions  # noqa: E402


def resolution_plot(variants: list[Variant], datasets: list[str], k: str, feat: str, path: Path) -> Path | None:
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5 * max(len(datasets), 1), 3.5), squeeze=False)
    drawn = False
    colours = variant_colours(v.label for v in variants)  # the dashboard's colour for each variant
    for ax, d in zip(axes[0], datasets):
        for v in variants:
            evs = [r.eval() for r in v.runs]
            resolutions = evaluated_resolutions(v.runs, [d], feat)
            means = []
            for r in resolutions:
                vals = [x for e in evs if (x := value(e, "knn", d, feat, r, k)) is not None]
                means.append(100 * statistics.fmean(vals) if vals else float("nan"))
            if resolutions:
                ax.plot([int(r[:-2]) for r in resolutions], means, marker="o", label=v.label, color=colours[v.label])
                drawn = True
        ax.set_title(d)
        ax.set_xlabel("input resolution (px)")
        ax.set_ylabel(f"kNN {k} (%)")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def scaling_plot(points: list[Point], res: str, k: str, path: Path, colours: dict[str, str] | None = None) -> Path:
    """kNN avg against the number of selected images, a line per selection, in `colours` (selection -> colour: the
    dashboard's colour of the variant that stands for it) where given."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in sorted({p.selection for p in points}):
        ps = [p for p in points if p.selection == s]
        means = [100 * statistics.fmean(p.knn_avg) for p in ps]
        errs = [100 * statistics.stdev(p.knn_avg) if len(p.knn_avg) > 1 else 0.0 for p in ps]
        ax.errorbar(
            [p.images for p in ps], means, yerr=errs, marker="o", capsize=3, label=s, color=(colours or {}).get(s)
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({p.images for p in points}), [f"{n:,}" for n in sorted({p.images for p in points})])
    ax.set_xlabel("selected images (sample.target)")
    ax.set_ylabel(f"kNN {k} avg at {res} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
