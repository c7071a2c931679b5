"""DINOv3 (`DINOv3ViTModel`) as a frozen teacher: summary = CLS, registers after it, then the patch tokens.

DINOv3 uses RoPE on normalised patch coordinates, so any (even non-square) patch grid works without interpolating
position embeddings. Input normalisation: ImageNet mean/std unless the checkpoint's preprocessor_config.json says
otherwise.

Packed forward (`forward_packed`, what distillation runs): the step's packed sequences in one forward through the
model's own modules, each image's CLS and registers in a prefix block after the sequence's patches
(packed_attention.prefix_slots), block-diagonal attention (packed_attention), and RoPE per patch from its own
image's grid exactly as transformers computes it at eval: patch centres (i + 0.5) / n mapped to [-1, 1] per axis
(rows and columns normalised separately), angles 2 pi * coord * inv_freq, (rows' then columns' angles) tiled twice,
rotate-half on the patch tokens only; the training-time coordinate augmentation (pos_embed_shift / jitter / rescale)
never runs because a teacher is always in eval mode. `forward(images)` keeps the per-size path (`HFTeacher`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from amoe_core.data.packed import PackedBatch
from amoe_core.models.packed_attention import PackedMask, packed_attention, prefix_slots
from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherOutput
from amoe_core.models.teachers.hf import HFTeacher, load_typed, read_normalisation, resolve_source

MODEL_TYPES = ("dinov3_vit",)


def rope(coords: Tensor, sizes: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) [S, 1, N, head_dim] of DINOv3's RoPE for patches at `coords` [S, N, 2] (row, col) of images of
    `sizes` [S, N, 2] (rows, cols); the same float32 operations as transformers' per-image computation."""
    centre = (coords.to(torch.float32) + 0.5) / sizes.to(torch.float32)
    centre = 2.0 * centre - 1.0
    angles = 2 * math.pi * centre[..., None] * inv_freq  # [S, N, 2, F]
    angles = angles.flatten(-2).tile(2)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """transformers' rotate-half RoPE; cos = 1, sin = 0 (prefix and padding tokens) leave x exactly unchanged."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class DINOv3Teacher(HFTeacher):
    """`DINOv3ViTModel` outputs `[CLS, registers (config.num_register_tokens), patches]`; pooler_output is the CLS."""

    @torch.no_grad()
    def forward_packed(self, batch: PackedBatch) -> TeacherOutput:
        m = self.model
        emb, image_id = m.embeddings, batch.image_id.to(self.device)
        s, length = image_id.shape
        n, k, real = batch.n_images, 1 + self.num_registers, image_id >= 0
        layout = prefix_slots(image_id, n, k)

        conv = emb.patch_embeddings  # a stride-P convolution = a linear map of each (py, px, c) patch
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.weight.shape[0], -1)
        x = F.linear(self.packed_pixels(batch), weight, conv.bias)
        x = torch.cat([x, x.new_zeros(s, layout.slots * k, x.shape[-1])], 1)
        prefix = torch.cat([emb.cls_token, emb.register_tokens], 1).to(x.dtype).expand(n, k, -1)
        x = x.index_put((layout.seq, layout.pos), prefix)

        sizes = batch.image_sizes.to(self.device)[image_id.clamp_min(0)]
        cos, sin = rope(batch.coords.to(self.device), sizes, m.rope_embeddings.inv_freq, x.dtype)
        identity = layout.image_id.shape[1] - length  # prefix block: not rotated; padding: its value is unused
        cos = torch.cat([torch.where(real[:, None, :, None], cos, 1), cos.new_ones(s, 1, identity, cos.shape[-1])], 2)
        sin = torch.cat([torch.where(real[:, None, :, None], sin, 0), sin.new_zeros(s, 1, identity, sin.shape[-1])], 2)

        mask = PackedMask(layout.image_id)  # once per forward, shared by every layer
        for layer in m.model.layer:
            x = _layer(layer, x, cos, sin, mask)
        x = m.norm(x)
        prefix_out = x[layout.seq, layout.pos].float()  # [n, 1+R, D]
        return TeacherOutput(
            summary=prefix_out[:, 0],
            patches=x[:, :length][real].float(),
            registers=prefix_out[:, 1:] if self.num_registers else None,
        )


def _layer(layer: Any, x: Tensor, cos: Tensor, sin: Tensor, mask: PackedMask) -> Tensor:
    """`DINOv3ViTLayer.forward` at eval (drop path off) with packed attention, through the layer's own modules."""
    att = layer.attention
    s, n, d = x.shape
    h = layer.norm1(x)
    q, k, v = (
        p(h).view(s, n, att.num_heads, att.head_dim).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj)
    )
    o = packed_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, mask)  # scale head_dim**-0.5, as the model's
    x = layer.layer_scale1(att.o_proj(o.transpose(1, 2).reshape(s, n, d))) + x
    return layer.layer_scale2(layer.mlp(layer.norm2(x))) + x


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    from transformers import DINOv3ViTModel  # transformers: imported when a teacher loads (about a second of start-up)

    model = load_typed(spec, device, DINOv3ViTModel, MODEL_TYPES)
    mean, std = read_normalisation(resolve_source(spec.name, spec.path), (IMAGENET_MEAN, IMAGENET_STD))
    return DINOv3Teacher(spec.name, model, model.config, mean, std, kind="dinov3")
