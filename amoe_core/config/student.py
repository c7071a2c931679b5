"""The `student` section and the named student sizes: the architecture knobs (`StudentArch`), the named configs (the
released SigLino models, tiiuae/amoe, plus a CPU `tiny`) and `resolve_arch`, which applies `student.overrides`. Plain
data, no torch: params validation reads it, and so do the models (amoe_core.models), which config never imports."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from amoe_core.config.section import Section
from amoe_core.errors import ConfigError


class StudentConfig(Section):
    """The student (the released SigLino architecture): a named config plus optional overrides of its fields, and
    optionally released weights to start from (`init`: a SigLino `.pt` state dict or our safetensors export)."""

    name: str = Field(
        "tiny",
        description="Named architecture: tiny (CPU demo) or a released SigLino config (`amoe model info` lists them).",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Architecture fields changed from the named config, e.g. {depth: 6} (fields of StudentArch).",
    )
    init: Path | None = Field(
        None,
        description="Released weights to start from: a SigLino .pt state dict or our safetensors export (None = random init).",
    )


@dataclass(frozen=True)
class StudentArch:
    """The released SigLino architecture's knobs (field -> release `SigLinoArgs` name in amoe_core.models.release.siglino)."""

    depth: int  # n_layers
    dim: int
    heads: int
    head_dim: int
    patch_size: int = 16
    num_registers: int = 4  # n_storage_tokens
    num_experts: int = 28  # 0 = dense SwiGLU in every layer
    expert_hidden: int = 384  # moe_dim
    top_k: int = 2
    dense_layers: int = 0  # first_n_layers_dense: the first N layers use a dense SwiGLU instead of the MoE
    ffn_hidden: int = 0  # ffn_dim, hidden width of the dense layers; 0 = expert_hidden
    route_norm: bool = False  # renormalise the top-k gates (released models: no)
    route_scale: float = 1.0
    norm_weights: bool = True  # parameterized_norm: learned RMSNorm weights in the blocks (the 30M / 70M have none)
    norm_eps: float = 1e-5
    qk_norm: bool = True
    rope_min_freq: float = 1.0
    rope_max_freq: float = 20.0
    dispatch: str = "auto"  # auto | loop | grouped (see amoe_core.models.moe)

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and i >= self.dense_layers

    @property
    def dense_hidden(self) -> int:
        return self.ffn_hidden or self.expert_hidden


_MOE = dict(depth=18, dim=768, heads=8, head_dim=128, num_experts=28, expert_hidden=384)

ARCHS: dict[str, StudentArch] = {
    # CPU demo and tests: trains a few hundred steps on 2 cores in minutes; same design as the released models.
    "tiny": StudentArch(depth=4, dim=128, heads=4, head_dim=32, num_experts=8, expert_hidden=128, top_k=2),
    # The released SigLino models (tiiuae/amoe siglino/configs.py).
    "siglino-moe-0.3B": StudentArch(**_MOE, top_k=6),
    "siglino-moe-0.15B": StudentArch(**_MOE, top_k=2),
    "siglino-0.6B": StudentArch(depth=18, dim=1280, heads=16, head_dim=80, num_experts=0, ffn_hidden=5120),
    "siglino-70M": StudentArch(
        depth=12, dim=512, heads=8, head_dim=64, num_experts=0, ffn_hidden=2048, norm_weights=False
    ),
    "siglino-30M": StudentArch(
        depth=12, dim=384, heads=6, head_dim=64, num_experts=0, ffn_hidden=1536, norm_weights=False
    ),
}


# Keys a params file may still carry from earlier versions, and what replaces them.
REMOVED = {
    "aux_loss": "set loss.balance_aux_weight > 0 instead (the MoE balance loss counts exactly when its weight does)"
}


def resolve_arch(name: str, overrides: dict[str, Any] | None = None) -> StudentArch:
    """The named architecture with `student.overrides` applied; unknown names/fields raise ConfigError."""
    if name not in ARCHS:
        raise ConfigError(f"invalid student.name = {name!r}: known configs are {', '.join(ARCHS)}")
    arch = ARCHS[name]
    fields = {f.name: f for f in dataclasses.fields(StudentArch)}
    for key, value in (overrides or {}).items():
        if key in REMOVED:
            raise ConfigError(f"student.overrides.{key} was removed: {REMOVED[key]}")
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean student.overrides.{near[0]}? " if near else ""
            raise ConfigError(f"unknown key student.overrides.{key}; {hint}allowed: {', '.join(fields)}")
        if isinstance(getattr(arch, key), tuple):
            value = tuple(value)
        arch = dataclasses.replace(arch, **{key: value})
    if arch.num_experts and not 1 <= arch.top_k <= arch.num_experts:
        raise ConfigError(f"invalid student top_k = {arch.top_k}: must be in [1, num_experts = {arch.num_experts}]")
    if arch.head_dim % 4:
        raise ConfigError(f"invalid student head_dim = {arch.head_dim}: golden 2D RoPE needs a multiple of 4")
    return arch
