"""The `ablate` section: `amoe ablate`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class AblateConfig(Section):
    """`amoe ablate`: the paper's ablations as queued DVC experiments (amoe_core/experiments/ablations.py)."""

    seeds: int = Field(
        3, ge=1, description="Seed repeats per variant (distill.seed = 0 .. seeds-1); more narrows the error bars."
    )
    jobs: int = Field(
        2,
        ge=1,
        description="DVC queue workers running experiments side by side; raise it on a machine with spare cores.",
    )
    variants: list[str] = Field(
        default_factory=list,
        description="Variant names to run (amoe_core/experiments/ablations.py: VARIANTS); empty = all of them.",
    )
    # the ablation trains longer than the demo, to the length at which the reference student clears both expert checks
    # (README, Current results)
    overrides: list[str] = Field(
        default_factory=lambda: ["distill.steps=600", "distill.lr=0.002"],
        description="`section.key=value` overrides applied to every experiment of the ablation.",
    )
    out: Path = Field(
        Path("results/ablations"),
        description="Folder of the collected run records (versioned; `amoe report` reads them).",
    )
