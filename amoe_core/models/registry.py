"""Named student architectures (the released SigLino models, tiiuae/amoe, plus a CPU `tiny`) and
`amoe model info`: total and active parameter counts, computed on the meta device (nothing is allocated)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from amoe_core.errors import ConfigError


@dataclass(frozen=True)
class StudentArch:
    """The released SigLino architecture's knobs (field -> release `SigLinoArgs` name in amoe_core.models.siglino)."""

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
    aux_loss: bool = False  # optional Switch-style balance loss (ablations); balancing is aux-loss-free by default
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


def resolve_arch(name: str, overrides: dict[str, Any] | None = None) -> StudentArch:
    """The named architecture with `student.overrides` applied; unknown names/fields raise ConfigError."""
    if name not in ARCHS:
        raise ConfigError(f"invalid student.name = {name!r}: known configs are {', '.join(ARCHS)}")
    arch = ARCHS[name]
    fields = {f.name: f for f in dataclasses.fields(StudentArch)}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown key student.overrides.{key}; allowed: {', '.join(fields)}")
        if isinstance(getattr(arch, key), tuple):
            value = tuple(value)
        arch = dataclasses.replace(arch, **{key: value})
    if arch.num_experts and not 1 <= arch.top_k <= arch.num_experts:
        raise ConfigError(f"invalid student top_k = {arch.top_k}: must be in [1, num_experts = {arch.num_experts}]")
    if arch.head_dim % 4:
        raise ConfigError(f"invalid student head_dim = {arch.head_dim}: golden 2D RoPE needs a multiple of 4")
    return arch


def count_parameters(arch: StudentArch) -> dict[str, int]:
    """Backbone parameters (patch projector, prefix tokens, blocks, final norm; no adaptors, no frozen heads, no
    buffers), total and active per token (the experts a token is not routed to excluded), built on the meta device.
    The released SigLino-MoE-0.3B: 503.5M total, 153.2M active."""
    from amoe_core.models.student import Student

    with torch.device("meta"):
        model = Student(arch, {})
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for moe in model.moe_layers:
        per_expert = sum(p.numel() for p in moe.experts[0].parameters())
        inactive += (moe.num_experts - moe.top_k) * per_expert
    return {"total": total, "active": total - inactive}


def print_model_info(names: list[str] | None, params: Any) -> None:
    """`amoe model info [NAMES...]`: one line per named config (default: all, the configured one marked)."""
    current = params.student.name if params is not None else None
    for name in names or list(ARCHS):
        overrides = params.student.overrides if params is not None and name == current else {}
        arch = resolve_arch(name, overrides)
        n = count_parameters(arch)
        moe = (
            f"MoE {arch.num_experts}x{arch.expert_hidden} top-{arch.top_k}"
            if arch.num_experts
            else f"dense SwiGLU {arch.dense_hidden}"
        )
        mark = " *" if name == current else ""
        print(
            f"{name:18s} total {n['total'] / 1e6:9.2f}M  active {n['active'] / 1e6:9.2f}M  "
            f"{arch.depth} x {arch.dim}, {arch.heads} heads x {arch.head_dim}, {moe}{mark}"
        )
