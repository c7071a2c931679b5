"""The paper's three findings (loss, data, batching) read off the ablation's variants: each is the variant holding the
paper's winning setting against those that differ from it in that setting alone.

A verdict has to tell "does not hold" from "too small to see here", so each comparison states, in kNN points: our
effect and its standard error over seeds (Welch: s.e. = sqrt(var_a / n_a + var_b / n_b)), the paper's effect, and the
smallest effect this design detects. An effect beyond 2 s.e. is real (about 95% two-sided); a true effect of
2.8 s.e. is found 4 times in 5 (80% power: 2 + 0.84 s.e.), which is what "detectable" means here. Within noise, a
paper effect at or above that size would have shown, so the finding does not hold; below it, the experiment is too
small to see it. With 3 seeds the normal approximation is generous (a t-distribution would widen both bounds).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from amoe_core.tracking.variants import (
    Variant,
    eval_values,
    evaluated_resolutions,
    knn_avg_per_seed,
    short,
    train_values,
)

HEADING = "## The paper's findings at this scale"  # the report's section (its Prefect artifact quotes it)
SIGNIFICANT_SE = 2.0  # an effect beyond this many standard errors is not seed noise
DETECTABLE_SE = 2.84  # the smallest true effect found 80% of the time at that threshold (2 + 0.84 s.e.)


@dataclass(frozen=True)
class Finding:
    """One of the paper's ablations (AMoE / SigLino, arXiv 2512.20157), compared at demo scale."""

    key: str  # the param ablated
    winner: str  # the value the paper finds best
    claim: str
    paper_gain: dict[str, float]  # other value -> the paper's kNN gain of the winner over it, in points
    not_worse: bool = False  # the claim is "no loss" (batching's accuracy), not "better"


PAPER_FINDINGS = {
    "loss": Finding(
        "loss.relational",
        "arkd",
        "ARKD beats plain matching and symmetric RKD, 83.63 vs 83.54 vs 82.61 kNN avg (80.21 / 77.62 / 79.49 "
        "image-text)",
        {"none": 83.63 - 83.54, "rkd": 83.63 - 82.61},
    ),
    "data": Finding(
        "distill.selection",
        "balanced",
        "curated balanced data beats random data of the same size, 85.08 vs 82.66 kNN",
        {"random": 85.08 - 82.66},
    ),
    "batching": Finding(
        "packing.mode",
        "packed",
        "token-balanced packing trains faster (20k vs 7.5k tokens/s) and does not forget low resolutions",
        {},
        not_worse=True,
    ),
}
PAPER_SPEEDUP = 20.0 / 7.5  # batching: the paper's tokens/s, packed over fixed

EXPLAINED = (
    f"Effects in kNN points, winner minus the other; ± is the standard error of that difference over seeds. An effect "
    f"beyond {SIGNIFICANT_SE:g} s.e. holds; *detectable* is the smallest true effect this design finds 4 times in 5 "
    f"({DETECTABLE_SE:g} s.e.): within noise, a paper effect at least that large would have shown (does not hold), a "
    "smaller one is too small to see here."
)


@dataclass(frozen=True)
class Effect:
    """Winner minus other, in points, with the standard error of the difference (0 with fewer than 2 seeds each)."""

    diff: float
    se: float

    @classmethod
    def of(cls, ours: list[float], theirs: list[float]) -> Effect:
        diff = 100 * (statistics.fmean(ours) - statistics.fmean(theirs))
        se = 0.0
        if len(ours) > 1 and len(theirs) > 1:
            se = 100 * (statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)) ** 0.5
        return cls(diff, se)

    @property
    def detectable(self) -> float:
        return DETECTABLE_SE * self.se

    def text(self) -> str:
        if not self.se:
            return f"ours {self.diff:+.1f} (one seed, no noise estimate)"
        return f"ours {self.diff:+.1f} ± {self.se:.1f}, detectable {self.detectable:.1f}"


def verdict(effect: Effect, paper_gain: float | None = None, not_worse: bool = False) -> str:
    """ "holds" / "does not hold" / "too small to see here" for a claim that the winner is better (or no worse)."""
    bound = SIGNIFICANT_SE * effect.se
    if not_worse:
        if effect.diff < -bound or (not effect.se and effect.diff < 0):
            return "does not hold: worse"
        if effect.se and effect.diff > bound:
            return "holds: better"
        return "holds: no loss beyond seed noise" if effect.se else "holds (one seed)"
    if not effect.se:
        return "holds (one seed)" if effect.diff > 0 else "does not hold (one seed)"
    if effect.diff > bound:
        return "holds"
    if effect.diff < -bound:
        return "does not hold: reversed"
    if paper_gain is not None and paper_gain < effect.detectable:
        return f"too small to see here: the paper's {paper_gain:+.2f} is below the detectable {effect.detectable:.1f}"
    return "does not hold: within seed noise, where the paper's effect would have shown"


def _per_domain(a: Variant, b: Variant, datasets: list[str], res: str, k: str, feat: str) -> str:
    """Per dataset mean kNN, e.g. 'clipart 41.2 vs 38.0, fmnist 75.0 vs 77.8': an average can hide a trade-off."""
    parts = []
    for d in datasets:
        x, y = eval_values(a, "knn", d, feat, res, k), eval_values(b, "knn", d, feat, res, k)
        if x and y:
            parts.append(f"{d} {100 * statistics.fmean(x):.1f} vs {100 * statistics.fmean(y):.1f}")
    return ", ".join(parts)


def ablation_pair(variants: list[Variant], key: str, expected: str) -> tuple[Variant, list[Variant]] | None:
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
    lines = [EXPLAINED, ""]
    for name, f in PAPER_FINDINGS.items():
        lines.append(f"- **{name}**. Paper: {f.claim}.")
        pair = ablation_pair(variants, f.key, f.winner)
        if pair is None:
            lines.append("  - not ablated in these runs.")
            continue
        base, others = pair
        ours = knn_avg_per_seed(base, datasets, res, k, feat)
        for o in others:
            other = short(o.settings[f.key])
            theirs = knn_avg_per_seed(o, datasets, res, k, feat)
            if ours and theirs:
                effect = Effect.of(ours, theirs)
                gain = f.paper_gain.get(other)
                paper = f", paper {gain:+.2f}" if gain is not None else ""
                lines.append(
                    f"  - kNN avg at {res}, {f.winner} {100 * statistics.fmean(ours):.1f} vs {other} "
                    f"{100 * statistics.fmean(theirs):.1f}: {effect.text()}{paper}: "
                    f"**{verdict(effect, gain, f.not_worse)}**; " + _per_domain(base, o, datasets, res, k, feat)
                )
            if name == "batching":
                lines += [f"  - {x}" for x in _batching_details(base, o, datasets, k, feat)]
    return lines


def _batching_details(base: Variant, other: Variant, datasets: list[str], k: str, feat: str) -> list[str]:
    """Throughput, and accuracy at the lowest and highest evaluated resolution (the forgetting question)."""
    out = []
    mode = short(other.settings["packing.mode"])
    tput = [train_values(v, "tokens_per_s") for v in (base, other)]
    if all(tput):
        ratio = statistics.fmean(tput[0]) / statistics.fmean(tput[1])
        out.append(
            f"tokens/s, packed / {mode}: {ratio:.2f}x (paper {PAPER_SPEEDUP:.2f}x): "
            f"**{'holds' if ratio > 1 else 'does not hold'}**"
        )
    resolutions = evaluated_resolutions(base.runs, datasets, feat)
    for r in dict.fromkeys([resolutions[0], resolutions[-1]] if resolutions else []):  # low and high ends
        ours, theirs = (knn_avg_per_seed(v, datasets, r, k, feat) for v in (base, other))
        if ours and theirs:
            effect = Effect.of(ours, theirs)
            out.append(
                f"kNN avg at {r}, packed {100 * statistics.fmean(ours):.1f} vs {mode} "
                f"{100 * statistics.fmean(theirs):.1f}: {effect.text()}: **{verdict(effect, not_worse=True)}**"
            )
    return out
