"""The student: the released SigLino architecture (tiiuae/amoe, arXiv 2512.20157) over packed native-resolution
images.

Per image: CLS, R storage (register) tokens, then its patches (bias-free linear projection of mean/std-0.5
normalised pixels). Blocks: pre-norm RMSNorm, bias-free q/k/v/o attention with parameter-free QK RMSNorm, golden 2D
RoPE on half of each head (amoe_core.models.rope), a learned per-head attention sink, then a SwiGLU MoE (sigmoid
router, top-k, no shared expert; aux-loss-free balancing) or, in the first `dense_layers` blocks, a dense SwiGLU.
Final RMSNorm; per teacher one Adapter on CLS and patches; a SigLIP2-kind teacher's summary is its frozen MAP head
over the adapted CLS + registers + patches. Initialisation follows the release (depth-scaled std, zero-initialised
output projections). Parameter names are the release's except the experts (one module per expert here, stacked
tensors there; amoe_core.models.release.siglino maps them), so released checkpoints load and ours export.

Training with PHI-S (Ranzinger et al.): the adapters predict raw teacher features, so the trained student's inference
graph is exactly the release's. PHI-S, x -> alpha * H U^T (x - mu), is applied alike to prediction and target inside
the loss (`normalize`); being an isometry up to alpha, it turns each MSE into alpha^2 * raw MSE, i.e. it balances the
teachers' losses (what PHI-S is for) without entering the model. Register targets (DINOv3) stay raw.

Sequence layout: a `PackedBatch` sequence holds exactly L patch tokens; the student appends a fixed block of
`max_images_per_seq * (1 + R)` prefix slots, the j-th image of the sequence owning slots j*(1+R) ... j*(1+R)+R
(CLS first). Unused slots get image id -1 like padding, so shapes are static for a given batch geometry. Padding and
unused slots only attend to themselves and never enter the MoE, so each image's output equals its forward alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amoe_core.config.student import StudentArch, StudentConfig, resolve_arch
from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError
from amoe_core.models.heads import Adapter, PhiSPair, TeacherDims, frozen_copy
from amoe_core.models.moe import FeedForward, MoEFFN
from amoe_core.models.packed_attention import PackedMask, packed_attention, prefix_slots, segment_count
from amoe_core.models.rope import apply_golden, centred_coords, golden_angles, golden_frequencies
from amoe_core.models.teachers.base import TeacherOutput

PIXEL_MEAN, PIXEL_STD = 0.5, 0.5  # the released image processor's normalisation (all channels)


@dataclass
class StudentOutput:
    summary: Tensor  # [n, d] native CLS features
    patches: Tensor  # [n_tokens, d] native patch features, canonical packed order
    registers: Tensor  # [n, R, d]
    teachers: dict[str, TeacherOutput] = field(default_factory=dict)  # adapter outputs, raw teacher space
    router_load: Tensor | None = None  # [moe_layers, E] fraction of routed token slots per expert
    aux_loss: Tensor | None = None  # sum over MoE layers of the balance loss (training forwards of an MoE only)


def _norm(arch: StudentArch) -> nn.RMSNorm:
    """A block's pre-norm: learned RMSNorm, or (the 30M / 70M) parameter-free with torch's default eps."""
    if arch.norm_weights:
        return nn.RMSNorm(arch.dim, eps=arch.norm_eps)
    return nn.RMSNorm(arch.dim, eps=None, elementwise_affine=False)


class Attention(nn.Module):
    def __init__(self, arch: StudentArch) -> None:
        super().__init__()
        self.heads, self.head_dim, self.qk_norm = arch.heads, arch.head_dim, arch.qk_norm
        inner = arch.heads * arch.head_dim
        self.wq = nn.Linear(arch.dim, inner, bias=False)
        self.wk = nn.Linear(arch.dim, inner, bias=False)
        self.wv = nn.Linear(arch.dim, inner, bias=False)
        self.wo = nn.Linear(inner, arch.dim, bias=False)
        self.sinks = nn.Parameter(torch.zeros(arch.heads))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: PackedMask) -> Tensor:
        s, n, _ = x.shape
        q, k, v = (w(x).view(s, n, self.heads, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = apply_golden(q, *rope), apply_golden(k, *rope)
        o = packed_attention(q, k, v, mask, self.sinks)
        return self.wo(o.transpose(1, 2).reshape(s, n, self.heads * self.head_dim))

    def init_weights(self, std: float) -> None:
        for w in (self.wq, self.wk, self.wv):
            nn.init.trunc_normal_(w.weight, std=std)
        nn.init.zeros_(self.wo.weight)
        nn.init.trunc_normal_(self.sinks, std=std)


class Block(nn.Module):
    """Pre-norm transformer block; the FFN (MoE or dense SwiGLU) runs only on real tokens."""

    def __init__(self, arch: StudentArch, layer: int) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = _norm(arch), _norm(arch)
        self.attention = Attention(arch)
        self.moe: MoEFFN | None = None
        self.feed_forward: FeedForward | None = None
        if arch.is_moe_layer(layer):
            self.moe = MoEFFN(
                arch.dim,
                arch.expert_hidden,
                arch.num_experts,
                arch.top_k,
                route_norm=arch.route_norm,
                route_scale=arch.route_scale,
                dispatch=arch.dispatch,  # type: ignore[arg-type]
            )
        else:
            self.feed_forward = FeedForward(arch.dim, arch.dense_hidden)
        self.init_std = 0.02 / (2 * (layer + 1)) ** 0.5  # the release's depth-scaled init

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: PackedMask, real: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x), rope, mask)
        h = self.ffn_norm(x)[real]  # [n_real, d]: padding and unused prefix slots are not routed
        ffn = self.moe if self.moe is not None else self.feed_forward
        return x.index_put((real,), x[real] + ffn(h))

    def init_weights(self) -> None:
        self.attention.init_weights(self.init_std)
        (self.moe if self.moe is not None else self.feed_forward).init_weights(self.init_std)


class Student(nn.Module):
    def __init__(
        self, arch: StudentArch, teachers: dict[str, TeacherDims], max_images_per_seq: int | None = None
    ) -> None:
        super().__init__()
        self.arch, self.max_images_per_seq = arch, max_images_per_seq
        self.num_prefix = 1 + arch.num_registers
        self.img_projector = nn.Linear(3 * arch.patch_size**2, arch.dim, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, arch.num_registers, arch.dim))
        self.register_buffer(
            "freqs_cis_golden", golden_frequencies(arch.heads, arch.head_dim, arch.rope_min_freq, arch.rope_max_freq)
        )
        self.layers = nn.ModuleList(Block(arch, i) for i in range(arch.depth))
        self.norm = nn.RMSNorm(arch.dim, eps=arch.norm_eps)
        for name, t in teachers.items():
            if t.num_registers > arch.num_registers:
                raise AmoeError(
                    f"teacher {name!r} has {t.num_registers} registers but the student only {arch.num_registers}; "
                    f"set student.overrides.num_registers >= {t.num_registers}"
                )
        self.teacher_registers = {name: t.num_registers for name, t in teachers.items()}
        self.teacher_kinds = {name: t.kind for name, t in teachers.items()}
        self.adapters = nn.ModuleDict({name: Adapter(arch.dim, t.dim) for name, t in teachers.items()})
        self.summary_heads = nn.ModuleDict(
            {name: frozen_copy(t.summary_head) for name, t in teachers.items() if t.summary_head is not None}
        )
        self.phis = nn.ModuleDict({name: PhiSPair(t.dim) for name, t in teachers.items()})
        self.release_extras: dict[str, Tensor] = {}  # released tensors the graph never uses (see models.siglino)
        if self.cls_token.device.type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.img_projector.weight, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        for block in self.layers:
            block.init_weights()
        for adapter in self.adapters.values():
            adapter.init_weights()

    @property
    def moe_layers(self) -> list[MoEFFN]:
        return [b.moe for b in self.layers if b.moe is not None]

    def update_balance_bias(self, rate: float, group: torch.distributed.ProcessGroup | None = None) -> None:
        """Aux-loss-free balancing: call after each optimiser step (see MoEFFN.update_bias)."""
        for moe in self.moe_layers:
            moe.update_bias(rate, group)

    def forward(self, batch: PackedBatch) -> StudentOutput:
        pixels = (batch.patches - PIXEL_MEAN) / PIXEL_STD
        return self.encode(pixels, batch.coords, batch.image_id, batch.image_sizes)

    def encode(self, pixels: Tensor, coords: Tensor, image_id: Tensor, image_sizes: Tensor) -> StudentOutput:
        """The forward on normalised patches [S, L, 3*P*P] with the PackedBatch layout (coords, image_id, sizes)."""
        s, length = image_id.shape
        n, np_ = int(image_sizes.shape[0]), self.num_prefix
        real_patch = image_id >= 0

        # Where each image's prefix goes: after the L patch positions of its sequence (packed_attention.prefix_slots).
        layout = prefix_slots(image_id, n, np_, self.max_images_per_seq)
        prefix_seq, prefix_pos, ids, slots = layout.seq, layout.pos, layout.image_id, layout.slots

        # Tokens: projected patches, then the prefix block (CLS, registers) of every image.
        x = self.img_projector(pixels)
        x = torch.cat([x, x.new_zeros(s, slots * np_, x.shape[-1])], 1)
        prefix_tokens = torch.cat([self.cls_token, self.storage_tokens], 1).to(x.dtype).expand(n, np_, -1)
        x = x.index_put((prefix_seq, prefix_pos), prefix_tokens)
        real = ids >= 0
        mask = PackedMask(ids)  # once per forward, shared by every layer

        # Golden 2D RoPE on real patch tokens only.
        pos = centred_coords(coords, image_sizes[image_id.clamp_min(0)])
        pos = torch.cat([pos, pos.new_zeros(s, slots * np_, 2)], 1)
        rotate = torch.cat([real_patch, torch.zeros_like(real[:, length:])], 1)
        rope = golden_angles(pos, rotate, self.freqs_cis_golden)

        for block in self.layers:
            x = block(x, rope, mask, real)
        x = self.norm(x)

        patches = x[:, :length][real_patch]  # canonical order
        prefix = x[prefix_seq, prefix_pos]  # [n, 1+R, d]
        token_image_id = image_id[real_patch]
        teachers = {name: self._teacher(name, prefix, patches, token_image_id) for name in self.adapters}

        moes = self.moe_layers
        load = None
        if moes:
            counts = torch.stack([m.last_load for m in moes]).float()
            load = counts / counts.sum(-1, keepdim=True).clamp_min(1)
        aux = [m.aux_loss for m in moes if m.aux_loss is not None]
        return StudentOutput(
            prefix[:, 0], patches, prefix[:, 1:], teachers, load, torch.stack(aux).sum() if aux else None
        )

    def _teacher(self, name: str, prefix: Tensor, patches: Tensor, token_image_id: Tensor) -> TeacherOutput:
        """One teacher's predictions, raw teacher space: adapter on CLS / registers / patches; summary = adapted
        CLS, or the frozen pooling head over the image's adapted CLS + registers + patches."""
        adapter = self.adapters[name]
        y_prefix, y_patches = adapter(prefix), adapter(patches)
        r = self.teacher_registers[name]
        registers = y_prefix[:, 1 : 1 + r] if r else None
        if name not in self.summary_heads:
            return TeacherOutput(y_prefix[:, 0], y_patches, registers)
        n, np_ = y_prefix.shape[:2]
        counts = segment_count(token_image_id, n)
        start = torch.cumsum(counts, 0) - counts  # canonical order: each image's tokens are contiguous
        pos = np_ + torch.arange(y_patches.shape[0], device=y_patches.device) - start[token_image_id]
        width = np_ + (int(counts.max()) if n else 0)
        tokens = torch.cat([y_prefix, y_prefix.new_zeros(n, width - np_, y_prefix.shape[-1])], 1)
        tokens = tokens.index_put((token_image_id, pos), y_patches)
        mask = torch.zeros(n, width, dtype=torch.bool, device=tokens.device)
        mask[:, :np_] = True
        mask = mask.index_put((token_image_id, pos), torch.ones_like(pos, dtype=torch.bool))
        return TeacherOutput(self.summary_heads[name](tokens, mask), y_patches, registers)

    def normalize(self, outputs: dict[str, TeacherOutput]) -> dict[str, TeacherOutput]:
        """Raw teacher-space features (the teachers' or the student's) -> PHI-S space, for the loss."""
        return {name: self.phis[name](out) for name, out in outputs.items()}


def build_student(
    cfg: StudentConfig, teachers: dict[str, TeacherDims], max_images_per_seq: int | None = None
) -> Student:
    """The student of `params.student` with one head per teacher. `max_images_per_seq` (packing.max_images_per_seq)
    fixes the prefix block size for static shapes; None sizes it per batch."""
    return Student(resolve_arch(cfg.name, cfg.overrides), teachers, max_images_per_seq)
