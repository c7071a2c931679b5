"""The AMoE student: a ViT with a Mixture-of-Experts FFN over packed native-resolution images.

AMoE / SigLino (arXiv 2512.20157): patch 16, 1 CLS + R register tokens per image, RMSNorm pre-norm, QK-norm,
2D RoPE on per-image normalised coordinates, MoE FFN (sigmoid router, aux-loss-free balancing) in every layer, and
attention blocked between the images packed into one sequence (`packed_attention`).

Sequence layout: a `PackedBatch` sequence holds exactly L patch tokens; the student appends a fixed block of
`max_images_per_seq * (1 + R)` prefix slots, the j-th image of the sequence owning slots j*(1+R) ... j*(1+R)+R
(CLS first). Unused slots get image id -1 like padding, so shapes are static for a given batch geometry. Padding and
unused slots only attend to themselves and never enter the MoE, so each image's output equals its forward alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import RmsNorm, SwiGLU, trunc_normal_
from torch import Tensor, nn

from amoe_core.config import StudentConfig
from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError
from amoe_core.models.heads import TeacherDims, TeacherHead
from amoe_core.models.moe import MoEFFN
from amoe_core.models.packed_attention import packed_attention
from amoe_core.models.registry import StudentArch, resolve_arch
from amoe_core.models.rope import apply_rope, normalized_coords, rope_sin_cos
from amoe_core.models.teachers.base import TeacherOutput


@dataclass
class StudentOutput:
    summary: Tensor  # [n, d] native CLS features
    patches: Tensor  # [n_tokens, d] native patch features, canonical packed order
    registers: Tensor  # [n, R, d]
    teachers: dict[str, TeacherOutput] = field(default_factory=dict)  # adaptor outputs, PHI-S-normalised space
    router_load: Tensor | None = None  # [moe_layers, E] fraction of routed token slots per expert
    aux_loss: Tensor | None = None  # sum over MoE layers of the optional balance loss (None when disabled)


class Attention(nn.Module):
    """Multi-head attention with QK-norm (RMSNorm per head), 2D RoPE and the packed block mask."""

    def __init__(self, dim: int, heads: int, head_dim: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.q_norm = RmsNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RmsNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], image_id: Tensor) -> Tensor:
        s, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(s, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        o = packed_attention(q, k, v, image_id)
        return self.proj(o.transpose(1, 2).reshape(s, n, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block; the FFN (MoE or dense SwiGLU) runs only on real tokens."""

    def __init__(self, arch: StudentArch, moe: bool) -> None:
        super().__init__()
        self.norm1 = RmsNorm(arch.dim)
        self.attn = Attention(arch.dim, arch.heads, arch.head_dim, arch.qk_norm)
        self.norm2 = RmsNorm(arch.dim)
        if moe:
            self.mlp: nn.Module = MoEFFN(
                arch.dim,
                arch.expert_hidden,
                arch.num_experts,
                arch.top_k,
                arch.route_norm,
                arch.aux_loss,
                arch.dispatch,
            )
        else:
            self.mlp = SwiGLU(arch.dim, arch.dense_hidden, arch.dim, bias=False)

    @property
    def moe(self) -> MoEFFN | None:
        return self.mlp if isinstance(self.mlp, MoEFFN) else None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], image_id: Tensor, real: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, image_id)
        h = self.norm2(x)[real]  # [n_real, d]: padding and unused prefix slots are not routed
        return x.index_put((real,), x[real] + self.mlp(h))


class Student(nn.Module):
    def __init__(
        self, arch: StudentArch, teachers: dict[str, TeacherDims], max_images_per_seq: int | None = None
    ) -> None:
        super().__init__()
        self.arch, self.max_images_per_seq = arch, max_images_per_seq
        self.num_prefix = 1 + arch.num_registers
        p = arch.patch_size
        self.patch_embed = nn.Linear(3 * p * p, arch.dim)
        self.prefix = nn.Parameter(torch.zeros(self.num_prefix, arch.dim))  # CLS, then registers
        self.blocks = nn.ModuleList(Block(arch, arch.is_moe_layer(i)) for i in range(arch.depth))
        self.norm = RmsNorm(arch.dim)
        hidden = arch.adaptor_hidden or arch.dim
        for name, t in teachers.items():
            if t.num_registers > arch.num_registers:
                raise AmoeError(
                    f"teacher {name!r} has {t.num_registers} registers but the student only {arch.num_registers}; "
                    f"set student.overrides.num_registers >= {t.num_registers}"
                )
        self.heads = nn.ModuleDict({name: TeacherHead(arch.dim, hidden, t) for name, t in teachers.items()})
        self.register_buffer("pixel_mean", torch.tensor(arch.mean).repeat(p * p), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(arch.std).repeat(p * p), persistent=False)
        if self.prefix.device.type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.prefix, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight.requires_grad:
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def moe_layers(self) -> list[MoEFFN]:
        return [b.moe for b in self.blocks if b.moe is not None]

    def update_balance_bias(self, rate: float, group: torch.distributed.ProcessGroup | None = None) -> None:
        """Aux-loss-free balancing: call after each optimiser step (see MoEFFN.update_bias)."""
        for moe in self.moe_layers:
            moe.update_bias(rate, group)

    def forward(self, batch: PackedBatch) -> StudentOutput:
        s, length = batch.image_id.shape
        n, np_ = batch.n_images, self.num_prefix
        image_id = batch.image_id
        real_patch = image_id >= 0

        # Where each image's prefix goes: its sequence and its rank among that sequence's images.
        seq = torch.arange(s, device=image_id.device)[:, None].expand(s, length)
        img_seq = torch.zeros(n, dtype=torch.long, device=image_id.device).scatter(
            0, image_id[real_patch], seq[real_patch]
        )
        first = torch.full((s,), n, dtype=torch.long, device=image_id.device)
        first = first.scatter_reduce(0, seq[real_patch], image_id[real_patch], reduce="amin")
        rank = torch.arange(n, device=image_id.device) - first[img_seq]
        slots = self.max_images_per_seq or (int(rank.max()) + 1 if n else 1)
        if n and int(rank.max()) >= slots:
            raise AmoeError(
                f"a sequence holds {int(rank.max()) + 1} images but the student reserves prefix slots for "
                f"{slots}; raise packing.max_images_per_seq consistently"
            )
        prefix_pos = length + rank[:, None] * np_ + torch.arange(np_, device=image_id.device)  # [n, 1+R]
        prefix_seq = img_seq[:, None].expand(n, np_)

        # Tokens: normalised patches embedded, then the prefix block.
        x = self.patch_embed((batch.patches - self.pixel_mean) / self.pixel_std)
        x = torch.cat([x, x.new_zeros(s, slots * np_, x.shape[-1])], 1)
        x = x.index_put((prefix_seq, prefix_pos), self.prefix.to(x.dtype).expand(n, np_, -1))
        ids = torch.cat([image_id, image_id.new_full((s, slots * np_), -1)], 1)
        ids = ids.index_put((prefix_seq, prefix_pos), torch.arange(n, device=ids.device)[:, None].expand(n, np_))
        real = ids >= 0

        # 2D RoPE on patch tokens only.
        sizes = batch.image_sizes[image_id.clamp_min(0)]
        pos = normalized_coords(batch.coords, sizes)
        pos = torch.cat([pos, pos.new_zeros(s, slots * np_, 2)], 1)
        rotate = torch.cat([real_patch, torch.zeros_like(real[:, length:])], 1)
        rope = rope_sin_cos(pos, rotate, self.arch.head_dim, self.arch.rope_base)

        for block in self.blocks:
            x = block(x, rope, ids, real)
        x = self.norm(x)

        patches = x[:, :length][real_patch]  # canonical order
        prefix = x[prefix_seq, prefix_pos]  # [n, 1+R, d]
        summary, registers = prefix[:, 0], prefix[:, 1:]
        token_image_id = image_id[real_patch]
        teachers = {name: head(summary, patches, registers, token_image_id) for name, head in self.heads.items()}

        moes = self.moe_layers
        load = None
        if moes:
            counts = torch.stack([m.last_load for m in moes]).float()
            load = counts / counts.sum(-1, keepdim=True).clamp_min(1)
        aux = [m.aux_loss for m in moes if m.aux_loss is not None]
        return StudentOutput(summary, patches, registers, teachers, load, torch.stack(aux).sum() if aux else None)

    @torch.no_grad()
    def normalize_targets(self, targets: dict[str, TeacherOutput]) -> dict[str, TeacherOutput]:
        """Raw teacher outputs -> PHI-S-normalised targets, keyed like the heads."""
        return {name: self.heads[name].normalize(t) for name, t in targets.items()}


def build_student(
    cfg: StudentConfig, teachers: dict[str, TeacherDims], max_images_per_seq: int | None = None
) -> Student:
    """The student of `params.student` with one head per teacher. `max_images_per_seq` (packing.max_images_per_seq)
    fixes the prefix block size for static shapes; None sizes it per batch."""
    return Student(resolve_arch(cfg.name, cfg.overrides), teachers, max_images_per_seq)
