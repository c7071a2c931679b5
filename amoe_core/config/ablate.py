"""The `ablate` section: `amoe ablate`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class AblateConfig(Section):
    """`amoe ablate`: the paper's ablations as queued DVC experiments (amoe_core/experiments/ablations.py)."""

    seeds: int = Field(3, ge=1)  # distill.seed = 0 .. seeds-1 per variant
    jobs: int = Field(2, ge=1)  # DVC queue workers running experiments side by side
    variants: list[str] = Field(default_factory=list)  # empty = all (amoe_core/experiments/ablations.py: VARIANTS)
    # `key=value` for every experiment: the ablation trains longer than the demo, to the length at which the
    # reference student clears both expert checks (README, Current results)
    overrides: list[str] = Field(default_factory=lambda: ["distill.steps=600", "distill.lr=0.002"])
    out: Path = Path("results/ablations")  # the collected run records (versioned; `amoe report` reads them)
