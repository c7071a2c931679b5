"""The report's figures: PNGs written next to docs/RESULTS.md, byte-identical for the same runs (no timestamps)."""

from __future__ import annotations

import statistics
from pathlib import Path

from amoe_core.io import atomic_path
from amoe_core.tracking.variants import Variant, evaluated_resolutions, lookup


def resolution_plot(variants: list[Variant], datasets: list[str], k: str, feat: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5 * max(len(datasets), 1), 3.5), squeeze=False)
    drawn = False
    for ax, d in zip(axes[0], datasets):
        for v in variants:
            evs = [r.eval() for r in v.runs]
            resolutions = evaluated_resolutions(v.runs, [d], feat)
            means = []
            for r in resolutions:
                vals = [x for e in evs if (x := lookup(e, "knn", d, feat, r, k)) is not None]
                means.append(100 * statistics.fmean(vals) if vals else float("nan"))
            if resolutions:
                ax.plot([int(r[:-2]) for r in resolutions], means, marker="o", label=v.label)
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
