"""The data finding on the long-tail pool (`demo_pool.long_tail`, `amoe ablate` variant data-longtail): balanced vs
random selections of the same size, on the average and on the pool's tail classes.

Head and tail come from the pool's images per class that `evaluate.class_frequencies` copies into eval.json: the
evaluated classes (over all datasets) ordered by pool frequency, the least frequent half is the tail, the rest the
head. Effects, standard errors and detectable effects as in findings.py.
"""

from __future__ import annotations

import statistics

from amoe_core.experiments.data_scaling import SELECTION_KEY, scaling_points, scaling_table
from amoe_core.experiments.findings import Effect, verdict
from amoe_core.tracking.eval_record import CLASS_FREQUENCY, KNN_PER_CLASS, lookup
from amoe_core.tracking.runs import RunDir
from amoe_core.tracking.variants import Variant, knn_avg_per_seed, short

HEADING = "## The data finding on the long-tail pool"
PAPER_GAIN = 85.08 - 82.66  # curated vs random kNN (AMoE / SigLino): the claim the long-tail pool re-measures


def is_long_tail(v: Variant) -> bool:
    return bool(v.runs) and all((r.params().get("demo_pool") or {}).get("long_tail") is True for r in v.runs)


def long_tail_pair(variants: list[Variant]) -> tuple[Variant, Variant] | None:
    """The long-tail balanced variant with the most seeds and the random one that differs from it in selection only."""
    lt = [v for v in variants if is_long_tail(v)]
    for base in sorted(lt, key=lambda v: -len(v.runs)):
        if short(str(base.settings.get(SELECTION_KEY, "balanced"))) != "balanced":
            continue
        for o in lt:
            if o.settings.get(SELECTION_KEY) != base.settings.get(SELECTION_KEY) and all(
                o.settings[x] == base.settings[x] for x in base.settings if x != SELECTION_KEY
            ):
                return base, o
    return None


def head_tail_classes(run: RunDir, datasets: list[str], res: str, k: str, feat: str) -> tuple[list, list]:
    """(head, tail) as (dataset, class) pairs: evaluated classes by pool frequency, the least frequent half = tail."""
    ev = run.eval()
    freq = ev.get(CLASS_FREQUENCY) or {}
    found = [(d, c) for d in datasets for c in lookup(ev, KNN_PER_CLASS, d, feat, res, k) or {} if c in freq]
    ordered = sorted(found, key=lambda dc: (-freq[dc[1]], dc))
    half = len(ordered) - len(ordered) // 2
    return ordered[:half], ordered[half:]


def class_mean_per_seed(v: Variant, classes: list, res: str, k: str, feat: str) -> list[float]:
    """Per run: the mean per-class kNN accuracy over `classes` (runs missing one are left out)."""
    out = []
    for r in v.runs:
        accs = [lookup(r.eval(), KNN_PER_CLASS, d, feat, res, k, c) for d, c in classes]
        if classes and all(isinstance(a, int | float) for a in accs):
            out.append(statistics.fmean(accs))
    return out


def curation_rows(variants: list[Variant], curation: dict[str, dict]) -> list[list[str]]:
    """Did balancing do what it should on the long-tail pool: per selection size, the head concept's and the tail
    half's share in the pool and both selections and the slope of level-1 clusters against concept size, from the
    curation reports `amoe ablate` collected (experiment name -> report.json; an experiment's runs are
    `<experiment>-<run>`). Seeds share one curation, so each size is one row."""
    long_tail = [r.path.name for v in variants if is_long_tail(v) for r in v.runs]
    rows: dict[int, list[str]] = {}
    for name, rep in sorted(curation.items()):
        if not any(run.startswith(f"{name}-") for run in long_tail) or "concept_head_share" not in rep:
            continue
        head, tail = rep["concept_head_share"], rep["concept_tail_half_share"]
        slope = rep.get("concept_level1_clusters_vs_size_slope")
        rows.setdefault(
            int(rep["target"]),
            [
                f"{int(rep['target']):,} of {int(rep['pool_images']):,}",
                f"{(rep.get('concepts') or {}).get('head', '?')}: "
                + " / ".join(f"{100 * head[s]:.1f}" for s in ("pool", "balanced", "random")),
                " / ".join(f"{100 * tail[s]:.1f}" for s in ("pool", "balanced", "random")),
                "-" if slope is None else f"{slope:.2f}",
            ],
        )
    return [rows[t] for t in sorted(rows)]


CURATION_HEADER = [
    "selected images",
    "head concept share % (pool / balanced / random)",
    "tail-half share % (pool / balanced / random)",
    "slope of log level-1 clusters on log concept size",
]


def long_tail_section(
    variants: list[Variant], datasets: list[str], res: str, k: str, feat: str, curation: dict[str, dict] | None = None
) -> list[str]:
    """The report's section; [] when no long-tail balanced / random pair was run."""
    pair = long_tail_pair(variants)
    if pair is None:
        return []
    base, other = pair
    head, tail = head_tail_classes(base.runs[0], datasets, res, k, feat)
    freq = base.runs[0].eval().get(CLASS_FREQUENCY) or {}
    lines = [
        HEADING,
        "",
        "The pool redrawn with Zipf concept frequencies and near-duplicates of its head (`demo_pool.long_tail`): "
        "balanced vs random selections of the same size, each student evaluated on the same balanced test splits. "
        "Tail = the least frequent half of the evaluated classes by images in the pool: "
        + ", ".join(f"{c} ({freq[c]})" for _, c in tail)
        + "; head: "
        + ", ".join(f"{c} ({freq[c]})" for _, c in head)
        + ".",
        "",
    ]
    rows = [
        ("kNN avg", knn_avg_per_seed(base, datasets, res, k, feat), knn_avg_per_seed(other, datasets, res, k, feat)),
        ("tail classes", class_mean_per_seed(base, tail, res, k, feat), class_mean_per_seed(other, tail, res, k, feat)),
        ("head classes", class_mean_per_seed(base, head, res, k, feat), class_mean_per_seed(other, head, res, k, feat)),
    ]
    for name, ours, theirs in rows:
        if ours and theirs:
            effect = Effect.of(ours, theirs)
            gain = PAPER_GAIN if name == "kNN avg" else None
            paper = f", paper {gain:+.2f}" if gain is not None else ""
            # the head carries no claim (balancing may cost it a little): its effect only
            said = "" if name == "head classes" else f": **{verdict(effect, gain)}**"
            lines.append(
                f"- **{name}** at {res}, balanced {100 * statistics.fmean(ours):.1f} vs random "
                f"{100 * statistics.fmean(theirs):.1f} ({len(ours)} / {len(theirs)} seeds): {effect.text()}{paper}{said}"
            )
    if rows := curation_rows(variants, curation or {}):
        lines += [
            "",
            "What balancing did to the pool's concepts (the curation reports of these experiments; balancing should "
            "lower the head's share, raise the tail's, and spread level-1 clusters over concepts: a slope below 1):",
            "",
            *_table((CURATION_HEADER, rows)),
        ]
    points = scaling_points(variants, datasets, res, k, feat, reference=base)
    if len({p.images for p in points}) > 1:
        lines += [
            "",
            "Data scaling on this pool (kNN avg against selected images):",
            "",
            *_table(scaling_table(points)),
        ]
    return lines + [""]


def _table(table: tuple[list[str], list[list[str]]]) -> list[str]:
    header, rows = table
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
