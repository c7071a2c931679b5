"""Runs grouped into *variants*: runs whose resolved params differ only by seed (and run name) are one variant.

One home for this grouping and for reading numbers out of a run, so `amoe report` (docs/RESULTS.md) and the dashboard
show the same variants and the same values. Only params.yaml, train.json (or the curves it summarises) and eval.json are read.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoe_core.tracking.eval_record import HEADLINE_K, KNN, headline_feature, lookup, res_px
from amoe_core.tracking.runs import RunDir, flatten

__all__ = ["HEADLINE_K", "headline_feature", "lookup"]  # re-exported: report and dashboard read both from here
# Keys that identify a run but not an experimental condition.
IDENTITY_KEYS = {"distill.seed", "distill.run", "distill.runs_dir"}
# Sections that configure other commands (the report itself, the ablation queue, sweeps), never a run's result.
OTHER_COMMANDS = ("report.", "ablate.", "sweep.")


@dataclass
class Variant:
    label: str
    settings: dict[str, Any]
    runs: list[RunDir] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(run_seed(r) for r in self.runs)


def run_seed(run: RunDir) -> int:
    return int((run.params().get("distill") or {}).get("seed", 0))


def conditions(run: RunDir) -> dict[str, str]:
    """The run's flattened params that define its experimental condition, as repr strings (comparable, hashable)."""
    return {
        k: repr(v)
        for k, v in flatten(run.params()).items()
        if k not in IDENTITY_KEYS and not k.startswith(OTHER_COMMANDS)
    }


def differing_keys(flat: Iterable[dict[str, str]]) -> list[str]:
    """The condition keys (see `conditions`) whose value is not the same in every run, sorted."""
    flat = list(flat)
    return sorted(k for k in {k for f in flat for k in f} if len({f.get(k) for f in flat}) > 1)


def group_variants(runs: list[RunDir]) -> list[Variant]:
    """Group runs by their params minus identity keys. The reference variant takes, for every key that differs
    between groups, its most common value over the runs (ties: the first in sorted order); every other variant is labelled by the
    settings where it departs from the reference."""
    flat = {r.id: conditions(r) for r in runs}
    differing = differing_keys(flat.values())
    groups: dict[tuple, Variant] = {}
    for r in sorted(runs, key=lambda r: r.id):
        settings = {k: flat[r.id].get(k, "-") for k in differing}
        groups.setdefault(tuple(settings.items()), Variant(label="", settings=settings)).runs.append(r)
    # counted over runs, not variants: the setting with the most runs (seeds) is the reference, so one-seed side
    # points (e.g. the data-scaling sizes) never outvote the three-seed ablation
    reference = {k: _modal([v.settings[k] for v in groups.values() for _ in v.runs]) for k in differing}
    for v in groups.values():
        departs = [f"{k.split('.')[-1]}={short(x)}" for k, x in v.settings.items() if x != reference[k]]
        v.label = ", ".join(departs) or ("reference" if differing else "all runs")
    return sorted(groups.values(), key=lambda v: (v.label != "reference", v.label))


def variant_order(labels: Iterable[str]) -> list[str]:
    """Variant labels in the report's order: the reference first, then by label, sweep trials last."""
    return sorted(set(labels), key=lambda v: (v.startswith("sweep "), v != "reference", v))


def _modal(values: list[str]) -> str:
    return sorted(set(values), key=lambda x: (-values.count(x), x))[0]


def short(v: str) -> str:
    """A setting as a person reads it: quotes dropped, a path shortened to its file stem."""
    v = v.strip("'\"")
    return Path(v).stem if "/" in v else v


def mean_std(values: list[float], scale: float = 100, digits: int = 1) -> str:
    """ "mean ± std" over seeds (accuracies in %), the mean alone for one seed, "-" for none."""
    if not values:
        return "-"
    m = statistics.fmean(values)
    if len(values) == 1:
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def eval_values(variant: Variant, *path: str) -> list[float]:
    """One eval.json number per run of the variant (runs without it are left out)."""
    vals = [lookup(r.eval(), *path) for r in variant.runs]
    return [float(v) for v in vals if isinstance(v, int | float)]


def train_values(variant: Variant, *path: str) -> list[float]:
    """One train.json number per run (the same summary computed from the curves for runs without train.json)."""
    vals = [lookup(r.train_summary(), *path) for r in variant.runs]
    return [float(v) for v in vals if isinstance(v, int | float)]


def knn_avg_per_seed(variant: Variant, datasets: list[str], res: str, k: str, feat: str) -> list[float]:
    """Per run: the kNN accuracy averaged over the datasets (runs missing a dataset are left out)."""
    out = []
    for r in variant.runs:
        accs = [lookup(r.eval(), KNN, d, feat, res, k) for d in datasets]
        if all(isinstance(a, int | float) for a in accs):
            out.append(statistics.fmean(accs))
    return out


def evaluated_resolutions(runs: list[RunDir], datasets: list[str], feat: str) -> list[str]:
    """Every evaluated resolution of `feat` in these runs, lowest first ("32px", "64px", ...)."""
    found = {r for run in runs for d in datasets for r in lookup(run.eval(), KNN, d, feat) or {}}
    return sorted(found, key=res_px)


def main_resolution(params: dict[str, Any], available: Iterable[str]) -> str | None:
    """The "<res>px" key closest to the run's `evaluate.main_resolution` (64 when the run does not say): the
    resolution every headline number is read at."""
    avail = [a for a in available if a.endswith("px") and a[:-2].isdigit()]
    if not avail:
        return None
    want = main_resolution_px(params)
    return min(avail, key=lambda a: (abs(int(a[:-2]) - want), int(a[:-2])))


def main_resolution_px(params: dict[str, Any]) -> int:
    return int((params.get("evaluate") or {}).get("main_resolution", 64))


def headline(runs: list[RunDir]) -> tuple[list[str], str | None, str | None]:
    """Datasets, student feature and resolution key that tables headline, from the first evaluated run."""
    first = next((r for r in runs if r.eval().get(KNN)), None)
    if first is None:
        return [], None, None
    knn = first.eval()[KNN]
    datasets = sorted(knn)
    feat = headline_feature(knn[datasets[0]])
    res = main_resolution(first.params(), knn[datasets[0]].get(feat, {})) if feat else None
    return datasets, feat, res
