"""The paper's three findings (loss, data, batching) read off the ablation's variants: each is the variant holding the
paper's winning setting against those that differ from it in that setting alone, with a verdict that tells a real
effect from seed noise."""

from __future__ import annotations

import statistics

from amoe_core.tracking.variants import (
    Variant,
    eval_values,
    evaluated_resolutions,
    knn_avg_per_seed,
    short,
    train_values,
)

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


def _per_domain(a: Variant, b: Variant, datasets: list[str], res: str, k: str, feat: str) -> str:
    """Per dataset mean kNN, e.g. 'clipart 41.2 vs 38.0, fmnist 75.0 vs 77.8': an average can hide a trade-off."""
    parts = []
    for d in datasets:
        x, y = eval_values(a, "knn", d, feat, res, k), eval_values(b, "knn", d, feat, res, k)
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
    candidates = [v for v in variants if key in v.settings and short(v.settings[key]) == expected]
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


def findings(variants: list[Variant], datasets: list[str], res: str, k: str, feat: str) -> list[str]:
    """Each paper finding: the winner variant against those that differ from it in the ablated setting only."""
    lines = []
    for name, (key, expected, claim) in PAPER_FINDINGS.items():
        lines.append(f"- **{name}**. Paper: {claim}.")
        pair = _ablation_pair(variants, key, expected)
        if pair is None:
            lines.append("  - not ablated in these runs.")
            continue
        base, others = pair
        ours = knn_avg_per_seed(base, datasets, res, k, feat)
        for o in others:
            theirs = knn_avg_per_seed(o, datasets, res, k, feat)
            if ours and theirs:
                lines.append(
                    f"  - kNN avg at {res}, {expected} {100 * statistics.fmean(ours):.1f} vs {short(o.settings[key])} "
                    f"{100 * statistics.fmean(theirs):.1f}: {_verdict(ours, theirs, not_worse=name == 'batching')}; "
                    + _per_domain(base, o, datasets, res, k, feat)
                )
            if name == "batching":
                lines += [f"  - {x}" for x in _batching_details(base, o, datasets, k, feat)]
    return lines


def _batching_details(base: Variant, other: Variant, datasets: list[str], k: str, feat: str) -> list[str]:
    """Throughput, and accuracy at the lowest and highest evaluated resolution (the forgetting question)."""
    out = []
    tput = [train_values(v, "tokens_per_s") for v in (base, other)]
    if all(tput):
        ratio = statistics.fmean(tput[0]) / statistics.fmean(tput[1])
        out.append(
            f"tokens/s, packed / {short(other.settings['packing.mode'])}: {ratio:.2f}x: {'holds' if ratio > 1 else 'does not hold'}"
        )
    resolutions = evaluated_resolutions(base.runs, datasets, feat)
    for r in dict.fromkeys([resolutions[0], resolutions[-1]] if resolutions else []):  # low and high ends
        ours, theirs = (knn_avg_per_seed(v, datasets, r, k, feat) for v in (base, other))
        if ours and theirs:
            out.append(
                f"kNN avg at {r}, packed {100 * statistics.fmean(ours):.1f} vs {short(other.settings['packing.mode'])} "
                f"{100 * statistics.fmean(theirs):.1f}: {_verdict(ours, theirs, not_worse=True)}"
            )
    return out
