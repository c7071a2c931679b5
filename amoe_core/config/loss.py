"""The `loss` section: the distillation losses of `amoe distill`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amoe_core.config.section import Section


class LossConfig(Section):
    """Feature losses on PHI-S normalised targets plus a relational term over the global batch of summaries."""

    relational: Literal["arkd", "rkd", "none"] = "arkd"
    relational_weight: float = Field(1.0, ge=0)  # feature-loss weights are per teacher (teachers[i].*_weight)
    # the Switch-style MoE balance loss counts when > 0 (its one switch); balancing is aux-loss-free by default
    balance_aux_weight: float = Field(0.0, ge=0)
    phis_samples: int = Field(2048, ge=16)  # teacher features used to fit PHI-S
