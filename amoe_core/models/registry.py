"""Named student architectures (AMoE / SigLino, arXiv 2512.20157, and its released configuration) and
`amoe model info`: total and active parameter counts, computed on the meta device (nothing is allocated)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from amoe_core.errors import ConfigError


@dataclass(frozen=True)
class StudentArch:
    depth: int
    dim: int
    heads: int
    head_dim: int
    patch_size: int = 16
    num_registers: int = 4
    num_experts: int = 28  # 0 = dense MLP everywhere
    expert_hidden: int = 384
    top_k: int = 2
    moe_every: int = 1  # MoE in layers i with i % moe_every == moe_every - 1; other layers are dense
    mlp_hidden: int = 0  # dense SwiGLU hidden (dense layers); 0 = top_k * expert_hidden (same active size)
    route_norm: bool = True
    aux_loss: bool = False
    dispatch: str = "auto"  # auto | loop | grouped (see amoe_core.models.moe)
    qk_norm: bool = True
    rope_base: float = 100.0  # DINOv3's RoPE period base
    adaptor_hidden: int = 0  # 0 = student width
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # the student's own fixed input normalisation
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and self.moe_every > 0 and i % self.moe_every == self.moe_every - 1

    @property
    def dense_hidden(self) -> int:
        return self.mlp_hidden or self.top_k * self.expert_hidden


_PAPER = dict(depth=18, dim=768, heads=8, head_dim=128, num_experts=28, expert_hidden=384)

ARCHS: dict[str, StudentArch] = {
    # CPU demo and tests: trains a few hundred steps on 2 cores in minutes.
    "tiny": StudentArch(depth=4, dim=128, heads=4, head_dim=32, num_experts=8, expert_hidden=128, top_k=2),
    # Released AMoE models: 18 x 768, 8 heads x 128, 28 routed experts of hidden 384 in every layer.
    "amoe-0.15b": StudentArch(**_PAPER, top_k=2),
    "amoe-0.3b": StudentArch(**_PAPER, top_k=6),
    # Dense siblings (widths and depths published; their MLP width is not, 4x width SwiGLU assumed).
    "dense-30m": StudentArch(depth=12, dim=384, heads=6, head_dim=64, num_experts=0, mlp_hidden=4 * 384),
    "dense-70m": StudentArch(depth=12, dim=512, heads=8, head_dim=64, num_experts=0, mlp_hidden=4 * 512),
    "dense-0.6b": StudentArch(depth=18, dim=1280, heads=20, head_dim=64, num_experts=0, mlp_hidden=4 * 1280),
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
        raise ConfigError(f"invalid student head_dim = {arch.head_dim}: 2D RoPE needs a multiple of 4")
    return arch


def count_parameters(arch: StudentArch, teachers: dict | None = None) -> dict[str, int]:
    """Total and active (per token) parameters of the student backbone, built on the meta device.

    Active = everything except the experts a token is not routed to. Frozen teacher modules (the SigLIP2 summary
    head copy) and PHI-S buffers are not counted; adaptor heads are, when `teachers` is given.
    """
    from amoe_core.models.student import Student

    with torch.device("meta"):
        model = Student(arch, teachers or {})
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inactive = 0
    for block in model.blocks:
        moe = getattr(block, "moe", None)
        if moe is not None:
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
            f"MoE {arch.num_experts}x{arch.expert_hidden} top-{arch.top_k} every {arch.moe_every}"
            if arch.num_experts
            else f"dense SwiGLU {arch.dense_hidden}"
        )
        mark = " *" if name == current else ""
        print(
            f"{name:12s} total {n['total'] / 1e6:9.2f}M  active {n['active'] / 1e6:9.2f}M  "
            f"{arch.depth} x {arch.dim}, {arch.heads} heads x {arch.head_dim}, {moe}{mark}"
        )
