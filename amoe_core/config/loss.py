"""The `loss` section: the distillation losses of `amoe distill`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amoe_core.config.section import Section


class LossConfig(Section):
    """Feature losses on PHI-S normalised targets plus a relational term over the global batch of summaries."""

    relational: Literal["arkd", "rkd", "none"] = Field(
        "arkd",
        description="Relational term between student and teacher summaries over the global batch: asymmetric ARKD, symmetric RKD, or none.",
    )
    relational_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the relational term (feature-loss weights are per teacher: teachers[i].*_weight).",
    )
    balance_aux_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the Switch-style MoE balance loss, which counts when > 0; balancing is aux-loss-free by default.",
    )
    phis_samples: int = Field(
        2048, ge=16, description="Teacher features used to fit the PHI-S normalisation before training."
    )
