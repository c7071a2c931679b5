"""`amoe report`: docs/RESULTS.md (tables + plot images) generated from any set of run directories.

Runs whose resolved params differ only by seed (and run name) form one *variant*; every table reports the mean and
standard deviation over a variant's seeds. The output depends only on the runs' files (sorted, no timestamps), so
the same runs always give a byte-identical report.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoe_core.config import Params
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path, atomic_write_text
from amoe_core.tracking.runs import TEACHERS_RUN, RunDir, flatten, list_runs

log = logging.getLogger(__name__)

# Keys that identify a run but not an experimental condition.
IDENTITY_KEYS = {"distill.seed", "distill.run", "distill.runs_dir"}
# Sections that configure other commands (the report itself, the ablation queue, sweeps), never a run's result.
OTHER_COMMANDS = ("report.", "ablate.", "sweep.")

# The paper's findings (AMoE / SigLino, arXiv 2512.20157), compared by direction of effect at demo scale.
# name: (the param ablated, the value the paper finds best, the paper's claim)
PAPER_FINDINGS = {
    "loss": (
        "loss.relational",
        "arkd",
        "ARKD beats plain matching and symmetric RKD, 83.63 vs 83.54 vs 82.61 kNN avg (80.21 / 77.62 / 79.49 "
        "image-text)",
    ),
    "data": (
        "distill.selection",
        "balanced",
        "curated balanced data beats random data of the same size, 85.08 vs 82.66 kNN",
    ),
    "batching": (
        "packing.mode",
        "packed",
        "token-balanced packing trains faster (20k vs 7.5k tokens/s) and does not forget low resolutions",
    ),
}


@dataclass
class Variant:
    label: str
    settings: dict[str, Any]
    runs: list[RunDir] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r.params().get("distill", {}).get("seed", 0)) for r in self.runs)


def group_variants(runs: list[RunDir]) -> list[Variant]:
    """Group runs by their params minus identity keys. The reference variant takes, for every key that differs
    between groups, its most common value (ties: the first in sorted order); every other variant is labelled by the
    settings where it departs from the reference."""
    flat = {
        r.id: {
            k: repr(v)
            for k, v in flatten(r.params()).items()
            if k not in IDENTITY_KEYS and not k.startswith(OTHER_COMMANDS)
        }
        for r in runs
    }
    all_keys = sorted({k for f in flat.values() for k in f})
    differing = [k for k in all_keys if len({f.get(k) for f in flat.values()}) > 1]
    groups: dict[tuple, Variant] = {}
    for r in sorted(runs, key=lambda r: r.id):
        settings = {k: flat[r.id].get(k, "-") for k in differing}
        groups.setdefault(tuple(settings.items()), Variant(label="", settings=settings)).runs.append(r)
    reference = {k: _modal([v.settings[k] for v in groups.values()]) for k in differing}
    for v in groups.values():
        departs = [f"{k.split('.')[-1]}={_short(x)}" for k, x in v.settings.items() if x != reference[k]]
        v.label = ", ".join(departs) or ("reference" if differing else "all runs")
    return sorted(groups.values(), key=lambda v: (v.label != "reference", v.label))


def _modal(values: list[str]) -> str:
    return sorted(set(values), key=lambda x: (-values.count(x), x))[0]


def _short(v: str) -> str:
    v = v.strip("'\"")
    return Path(v).stem if "/" in v else v


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * m:.1f}"
    return f"{100 * m:.1f} ± {100 * statistics.stdev(values):.1f}"


def _get(tree: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _values(variant: Variant, *path: str) -> list[float]:
    vals = [_get(r.eval(), *path) for r in variant.runs]
    return [float(v) for v in vals if isinstance(v, int | float)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(runs_dir: Path, out: Path, student_feature: str = "student:ensemble", k: str = "k20") -> str:
    """Write `out` (markdown) and its plots next to it; return the markdown."""
    teacher_eval = RunDir(Path(runs_dir) / TEACHERS_RUN).eval()  # written by `amoe evaluate --teachers`
    runs = [r for r in list_runs(runs_dir) if r.id != TEACHERS_RUN and r.eval_file.exists()]
    if not runs:
        raise AmoeError(f"no evaluated runs under {runs_dir}: run `amoe distill` and `amoe evaluate RUN` first")
    variants = group_variants(runs)
    first_eval = runs[0].eval()
    datasets = sorted(first_eval.get("knn", {}))
    res = _main_resolution(first_eval)
    teachers = sorted({f.split(":", 1)[1] for d in datasets for f in _get(teacher_eval, "knn", d) or {}})
    fidelity_teachers = sorted({t for r in runs for t in r.eval().get("fidelity", {})})

    parts = [
        "# Results",
        "",
        f"Generated by `amoe report` from {len(runs)} runs under `{runs_dir}`. Accuracies in %, mean ± std over seeds; "
        f"kNN uses {k} at {res}, feature `{student_feature}` for the student.",
        "",
        "## Variants",
        "",
        _table(
            ["variant", *(k for k in variants[0].settings), "seeds", "runs"],
            [
                [
                    v.label,
                    *(_short(x) for x in v.settings.values()),
                    ", ".join(map(str, v.seeds)),
                    ", ".join(r.id for r in v.runs),
                ]
                for v in variants
            ],
        ),
        "",
        "## kNN and linear probe per domain",
        "",
    ]
    header = ["model"] + [f"{d} kNN" for d in datasets] + [f"{d} linear" for d in datasets] + ["kNN avg"]
    rows = []
    for t in teachers:
        knn = [_get(teacher_eval, "knn", d, f"teacher:{t}", res, k) for d in datasets]
        lin = [_get(teacher_eval, "linear", d, f"teacher:{t}", res) for d in datasets]
        avg = statistics.fmean(x for x in knn if x is not None) if any(x is not None for x in knn) else None
        rows.append([f"teacher `{t}`"] + [mean_std([x] if x is not None else []) for x in knn + lin + [avg]])
    for v in variants:
        knn = [_values(v, "knn", d, student_feature, res, k) for d in datasets]
        lin = [_values(v, "linear", d, student_feature, res) for d in datasets]
        avgs = _per_seed_knn_avg(v, datasets, res, k, student_feature)
        rows.append([f"student ({v.label})"] + [mean_std(x) for x in knn + lin] + [mean_std(avgs)])
    parts += [_table(header, rows), ""]

    parts += [
        "## Student vs the domain experts",
        "",
        *_expert_check(variants, teacher_eval, datasets, res, k, student_feature),
        "",
    ]
    parts += ["## Fidelity to the teachers (student vs teacher features)", ""]
    fid_rows = []
    for v in variants:
        for t in fidelity_teachers:
            fid_rows.append(
                [v.label, t]
                + [mean_std(_values(v, "fidelity", t, m)) for m in ("summary_cos", "patch_cos", "cka", "spearman")]
            )
    parts += [_table(["variant", "teacher", "summary cos", "patch cos", "CKA", "Spearman"], fid_rows), ""]
    parts += ["## Throughput", "", _throughput_table(variants), ""]
    plot = _resolution_plot(variants, datasets, k, student_feature, out.parent / "results_resolution.png")
    parts += [
        f"## Accuracy across resolutions (kNN {k})",
        "",
        _resolution_table(variants, datasets, k, student_feature),
        "",
    ]
    if plot:
        parts += [f"![kNN vs resolution]({plot.name})", ""]
    parts += ["## The paper's findings at this scale", "", *_findings(variants, datasets, res, k, student_feature), ""]
    text = "\n".join(parts)
    atomic_write_text(out, text)
    return text


def _main_resolution(ev: dict[str, Any]) -> str:
    for d in ev.get("knn", {}).values():
        for f in d.values():
            return sorted(f, key=lambda s: int(s.rstrip("px")))[len(f) // 2] if f else "64px"
    return "64px"


def _expert_check(
    variants: list[Variant], teacher_eval: dict, datasets: list[str], res: str, k: str, feat: str
) -> list[str]:
    if not teacher_eval:
        return ["No teacher baselines (`amoe evaluate --teachers`): nothing to compare against."]
    lines = []
    teacher_scores = {
        t.split(":", 1)[1]: {d: _get(teacher_eval, "knn", d, t, res, k) for d in datasets}
        for t in sorted({f for d in datasets for f in _get(teacher_eval, "knn", d) or {}})
    }
    for v in variants:
        student = {d: statistics.fmean(x) for d in datasets if (x := _values(v, "knn", d, feat, res, k))}
        if len(student) != len(datasets):
            continue
        checks = []
        for d in datasets:
            expert = max(teacher_scores, key=lambda t: teacher_scores[t].get(d) or 0)
            ratio = student[d] / max(teacher_scores[expert][d] or 1e-9, 1e-9)
            shown = math.floor(1000 * ratio) / 10  # rounded down: 89.96% must not print as 90.0% below the bar
            checks.append(f"{d}: {shown:.1f}% of expert `{expert}` ({'ok' if ratio >= 0.9 else 'below 90%'})")
        s_avg = statistics.fmean(student.values())
        beats = all(s_avg > statistics.fmean(v2 or 0 for v2 in s.values()) for s in teacher_scores.values())
        checks.append(f"average {100 * s_avg:.1f}: {'beats' if beats else 'does not beat'} every single teacher")
        lines.append(f"- **{v.label}**: " + "; ".join(checks))
    return lines


def _throughput_table(variants: list[Variant]) -> str:
    """Median throughput after warm-up per run (train.json), mean ± std over seeds."""
    rows = []
    for v in variants:
        cells = []
        for key in ("tokens_per_s", "images_per_s"):
            vals = [float(x) for r in v.runs if isinstance(x := r.train_summary().get(key), int | float)]
            sd = f" ± {statistics.stdev(vals):,.0f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):,.0f}{sd}" if vals else "-")
        rows.append([v.label, *cells])
    return _table(["variant", "tokens/s", "images/s"], rows)


def _resolutions(runs: list[RunDir], datasets: list[str], feat: str) -> list[str]:
    """Every evaluated resolution of `feat` in these runs, lowest first ("32px", "64px", ...)."""
    found = {r for run in runs for d in datasets for r in _get(run.eval(), "knn", d, feat) or {}}
    return sorted(found, key=lambda s: int(s.rstrip("px")))


def _resolution_table(variants: list[Variant], datasets: list[str], k: str, feat: str) -> str:
    """kNN at every evaluated resolution: the batching finding is about the low and high ends."""
    resolutions = _resolutions([r for v in variants for r in v.runs], datasets, feat)
    header = ["variant"] + [f"{d} {r}" for d in datasets for r in resolutions]
    rows = [
        [v.label] + [mean_std(_values(v, "knn", d, feat, r, k)) for d in datasets for r in resolutions]
        for v in variants
    ]
    return _table(header, rows)


def _resolution_plot(variants: list[Variant], datasets: list[str], k: str, feat: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5 * max(len(datasets), 1), 3.5), squeeze=False)
    drawn = False
    for ax, d in zip(axes[0], datasets):
        for v in variants:
            evs = [r.eval() for r in v.runs]
            resolutions = _resolutions(v.runs, [d], feat)
            means = []
            for r in resolutions:
                vals = [x for e in evs if (x := _get(e, "knn", d, feat, r, k)) is not None]
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


def _per_seed_knn_avg(v: Variant, datasets: list[str], res: str, k: str, feat: str) -> list[float]:
    """Per run: the kNN accuracy averaged over the datasets (runs missing a dataset are left out)."""
    out = []
    for r in v.runs:
        accs = [_get(r.eval(), "knn", d, feat, res, k) for d in datasets]
        if all(isinstance(a, int | float) for a in accs):
            out.append(statistics.fmean(accs))
    return out


def _per_domain(a: Variant, b: Variant, datasets: list[str], res: str, k: str, feat: str) -> str:
    """Per dataset mean kNN, e.g. 'clipart 41.2 vs 38.0, fmnist 75.0 vs 77.8': an average can hide a trade-off."""
    parts = []
    for d in datasets:
        x, y = _values(a, "knn", d, feat, res, k), _values(b, "knn", d, feat, res, k)
        if x and y:
            parts.append(f"{d} {100 * statistics.fmean(x):.1f} vs {100 * statistics.fmean(y):.1f}")
    return ", ".join(parts)


def _verdict(ours: list[float], theirs: list[float], not_worse: bool = False) -> str:
    """Does `ours` (the paper's winner) come out ahead (or, with `not_worse`, no worse)? Gaps under two standard
    errors of the seeds count as noise."""
    diff = round(100 * (statistics.fmean(ours) - statistics.fmean(theirs)), 1)
    se = 0.0
    if len(ours) > 1 and len(theirs) > 1:
        se = 100 * (statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)) ** 0.5
    gap = f"{diff:+.1f} points, " + (f"2 s.e. = {2 * se:.1f}" if se else "one seed, no noise estimate")
    if not_worse:
        ok = diff >= -2 * se
        if not ok:
            return f"does not hold: worse ({gap})"
        if diff > 2 * se:
            return f"holds: better ({gap})"
        return f"holds: no loss beyond seed noise ({gap})"
    if diff > 2 * se:
        return f"holds ({gap})"
    if diff < -2 * se:
        return f"does not hold: reversed ({gap})"
    return f"does not hold: within seed noise ({gap})"


def _ablation_pair(variants: list[Variant], key: str, expected: str) -> tuple[Variant, list[Variant]] | None:
    """The variant with `key` = the paper's winner (the reference if it qualifies) and the variants that differ from
    it in `key` alone."""
    candidates = [v for v in variants if key in v.settings and _short(v.settings[key]) == expected]
    for base in sorted(candidates, key=lambda v: v.label != "reference"):
        others = [
            v
            for v in variants
            if v.settings[key] != base.settings[key]
            and all(v.settings[x] == base.settings[x] for x in base.settings if x != key)
        ]
        if others:
            return base, others
    return None


def _findings(variants: list[Variant], datasets: list[str], res: str, k: str, feat: str) -> list[str]:
    """Each paper finding: the winner variant against those that differ from it in the ablated setting only."""
    lines = []
    for name, (key, expected, claim) in PAPER_FINDINGS.items():
        lines.append(f"- **{name}**. Paper: {claim}.")
        pair = _ablation_pair(variants, key, expected)
        if pair is None:
            lines.append("  - not ablated in these runs.")
            continue
        base, others = pair
        ours = _per_seed_knn_avg(base, datasets, res, k, feat)
        for o in others:
            theirs = _per_seed_knn_avg(o, datasets, res, k, feat)
            if ours and theirs:
                lines.append(
                    f"  - kNN avg at {res}, {expected} {100 * statistics.fmean(ours):.1f} vs {_short(o.settings[key])} "
                    f"{100 * statistics.fmean(theirs):.1f}: {_verdict(ours, theirs, not_worse=name == 'batching')}; "
                    + _per_domain(base, o, datasets, res, k, feat)
                )
            if name == "batching":
                lines += [f"  - {x}" for x in _batching_details(base, o, datasets, k, feat)]
    return lines


def _batching_details(base: Variant, other: Variant, datasets: list[str], k: str, feat: str) -> list[str]:
    """Throughput, and accuracy at the lowest and highest evaluated resolution (the forgetting question)."""
    out = []
    tput = [
        [float(x) for r in v.runs if isinstance(x := r.train_summary().get("tokens_per_s"), int | float)]
        for v in (base, other)
    ]
    if all(tput):
        ratio = statistics.fmean(tput[0]) / statistics.fmean(tput[1])
        out.append(
            f"tokens/s, packed / {_short(other.settings['packing.mode'])}: {ratio:.2f}x: {'holds' if ratio > 1 else 'does not hold'}"
        )
    resolutions = _resolutions(base.runs, datasets, feat)
    for r in dict.fromkeys([resolutions[0], resolutions[-1]] if resolutions else []):  # low and high ends
        ours, theirs = (_per_seed_knn_avg(v, datasets, r, k, feat) for v in (base, other))
        if ours and theirs:
            out.append(
                f"kNN avg at {r}, packed {100 * statistics.fmean(ours):.1f} vs {_short(other.settings['packing.mode'])} "
                f"{100 * statistics.fmean(theirs):.1f}: {_verdict(ours, theirs, not_worse=True)}"
            )
    return out


def run(params: Params) -> Path:
    out = params.report.out
    build_report(params.report.runs_dir, out)
    log.info("wrote %s", out)
    return out
