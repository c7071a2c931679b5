"""The curation claim's data-scaling view: kNN against the number of selected images, balanced vs random.

The points are the variants that differ from the reference only in `sample.target` (how many images a selection
keeps) and/or `distill.selection` (balanced or random), e.g. `amoe ablate`'s `data-1000` / `data-2000` next to
the reference's own target.
"""

from __future__ import annotations

from dataclasses import dataclass

from amoe_core.tracking.variants import Variant, knn_avg_per_seed, mean_std, short

TARGET_KEY = "sample.target"
SELECTION_KEY = "distill.selection"


@dataclass(frozen=True)
class Point:
    selection: str
    images: int
    knn_avg: list[float]  # one per seed, fraction


def scaling_points(
    variants: list[Variant], datasets: list[str], res: str, k: str, feat: str, reference: Variant | None = None
) -> list[Point]:
    """One point per (selection, target) variant that matches `reference` (default: the report's reference, which
    group_variants puts first) in every other setting, sorted; empty when the runs vary no target."""
    reference = reference or (variants[0] if variants else None)
    if reference is None or TARGET_KEY not in reference.settings:
        return []
    others = [x for x in reference.settings if x not in (TARGET_KEY, SELECTION_KEY)]
    points = []
    for v in variants:
        if all(v.settings[x] == reference.settings[x] for x in others):
            selection = short(v.settings.get(SELECTION_KEY, reference.settings.get(SELECTION_KEY, "-")))
            accs = knn_avg_per_seed(v, datasets, res, k, feat)
            if accs:
                points.append(Point(selection, int(v.settings[TARGET_KEY]), accs))
    return sorted(points, key=lambda p: (p.selection, p.images))


def scaling_table(points: list[Point]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per number of images, one column per selection ("mean ± std (n seeds)")."""
    selections = sorted({p.selection for p in points})
    header = ["selected images", *(f"kNN avg, {s}" for s in selections)]
    rows = []
    for n in sorted({p.images for p in points}):
        cells = []
        for s in selections:
            p = next((p for p in points if p.selection == s and p.images == n), None)
            cells.append(f"{mean_std(p.knn_avg)} ({len(p.knn_avg)} seed{'s' * (len(p.knn_avg) > 1)})" if p else "-")
        rows.append([f"{n:,}", *cells])
    return header, rows
