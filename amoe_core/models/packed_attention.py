"""Attention and reductions over packed sequences, where several images share one sequence.

`image_id [S, N]` (-1 = padding) decides who may attend to whom: a token attends only to tokens of its own image,
so a packed forward equals each image's forward alone (AMoE / SigLino, arXiv 2512.20157, token-balanced batching).
One entry point: a boolean-mask SDPA everywhere, FlexAttention with a block mask on CUDA when available; the mask
(`PackedMask`) is built once per forward and shared by every layer.

Attention sinks (the released SigLino student): a learned logit s_h per head joins every softmax as one more "key"
with a zero value, i.e. the output is scaled by sigmoid(lse - s_h) with lse the log-sum-exp of the real logits. On
the CPU the sink is one extra key (see packed_attention); on CUDA FlexAttention returns the lse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from amoe_core.errors import AmoeError

try:  # FlexAttention (torch >= 2.5); without it CUDA takes the dense masked path too
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None


def packed_mask(image_id: Tensor) -> Tensor:
    """[S, 1, N, N] boolean mask: same image -> True. Padding tokens see only themselves (finite softmax)."""
    same = (image_id[:, :, None] == image_id[:, None, :]) & (image_id[:, :, None] >= 0)
    eye = torch.eye(image_id.shape[1], dtype=torch.bool, device=image_id.device)
    return (same | eye).unsqueeze(1)


def _use_flex(x: Tensor) -> bool:
    return x.is_cuda and flex_attention is not None


class PackedMask:
    """Who may attend to whom in one packed forward, built once and shared by every layer (timm's NaFlex ViT builds
    its mask once per forward too): a FlexAttention block mask on CUDA, else a dense boolean mask, and (built on
    first use) the dense mask with one more always-visible key for the attention sink."""

    def __init__(self, image_id: Tensor) -> None:
        self.image_id = image_id
        self.block: Any = None
        self.dense: Tensor | None = None
        self._with_sink: Tensor | None = None
        if _use_flex(image_id):
            self.block = _block_mask(image_id)
        else:
            self.dense = packed_mask(image_id)

    def with_sink(self) -> Tensor:
        if self._with_sink is None:
            assert self.dense is not None  # the CPU path only
            self._with_sink = torch.cat([self.dense, self.dense.new_ones(*self.dense.shape[:-1], 1)], -1)
        return self._with_sink


def packed_attention(q: Tensor, k: Tensor, v: Tensor, mask: PackedMask | Tensor, sinks: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention restricted to tokens of the same image, with optional per-head sinks [H].

    q, k, v: [S, H, N, Dh]; mask: a `PackedMask` (build it once per forward) or the image ids [S, N] (long) it is
    built from. Returns [S, H, N, Dh].
    """
    if not isinstance(mask, PackedMask):
        mask = PackedMask(mask)
    if mask.block is not None:
        return _flex_attention(q, k, v, mask.block, sinks)
    if sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    # The sink as one more key whose logit is exactly s_h for every query: q gets a constant extra channel 1, real
    # keys a 0 there, the sink key (s_h / scale) there and zeros elsewhere, its value is zero. The mask stays boolean,
    # so the CPU's fused attention kernel runs (tiny student: 0.55 s per training step vs 1.3 s with an explicit softmax).
    s, h, n, d = q.shape
    scale = d**-0.5
    col = q.new_zeros(s, h, n, 1)
    sink_key = torch.cat([q.new_zeros(s, h, 1, d), (sinks.to(q.dtype) / scale).view(1, h, 1, 1).expand(s, h, 1, 1)], -1)
    q = torch.cat([q, col + 1], -1)
    k = torch.cat([torch.cat([k, col], -1), sink_key], 2)
    v = torch.cat([torch.cat([v, col], -1), q.new_zeros(s, h, 1, d + 1)], 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.with_sink(), scale=scale)[..., :d]


@functools.cache
def _compiled_flex():  # noqa: ANN202 - uncompiled flex_attention falls back to a slow reference kernel
    return torch.compile(flex_attention, dynamic=True)


def _block_mask(image_id: Tensor) -> Any:
    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001 - signature fixed by FlexAttention
        qi, ki = image_id[b, q_idx], image_id[b, kv_idx]
        return ((qi == ki) & (qi >= 0)) | (q_idx == kv_idx)

    s, n = image_id.shape
    return create_block_mask(mask_mod, B=s, H=None, Q_LEN=n, KV_LEN=n, device=image_id.device)


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: Any, sinks: Tensor | None) -> Tensor:
    if sinks is None:
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    out, lse = _compiled_flex()(q, k, v, block_mask=block_mask, return_lse=True)
    scale = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))
    return (out.float() * scale.unsqueeze(-1)).to(q.dtype)


def segment_sum(x: Tensor, segment: Tensor, n: int) -> Tensor:
    """Sum rows of x [T, ...] into n segments given segment ids [T] (no Python loop over segments)."""
    out = x.new_zeros((n, *x.shape[1:]))
    return out.index_add(0, segment, x)


def segment_count(segment: Tensor, n: int) -> Tensor:
    return torch.bincount(segment, minlength=n)


def segment_mean(x: Tensor, segment: Tensor, n: int) -> Tensor:
    """Mean of rows of x [T, ...] per segment id; [n, ...]. Empty segments give 0."""
    counts = segment_count(segment, n).clamp_min(1).to(x.dtype)
    return segment_sum(x, segment, n) / counts.view(-1, *([1] * (x.dim() - 1)))


@dataclass
class PrefixSlots:
    """Where each image's prefix tokens (CLS, registers) sit in its packed sequence: a block of `slots * per_image`
    positions after the L patch positions, the j-th image of a sequence owning j*per_image ... (j+1)*per_image - 1."""

    seq: Tensor  # [n, per_image] sequence of each prefix token
    pos: Tensor  # [n, per_image] its position in the sequence (>= L)
    image_id: Tensor  # [S, L + slots * per_image]: the batch's ids, then the prefix block's (-1 = unused slot)
    slots: int  # images per sequence the block has room for


def prefix_slots(image_id: Tensor, n: int, per_image: int, slots: int | None = None) -> PrefixSlots:
    """The prefix layout of a packed batch (image_id [S, L], canonical order, n images); `slots` fixes the block's
    size (static shapes), None sizes it to the fullest sequence."""
    s, length = image_id.shape
    dev = image_id.device
    real = image_id >= 0
    seq = torch.arange(s, device=dev)[:, None].expand(s, length)
    img_seq = torch.zeros(n, dtype=torch.long, device=dev).scatter(0, image_id[real], seq[real])
    first = torch.full((s,), n, dtype=torch.long, device=dev)
    first = first.scatter_reduce(0, seq[real], image_id[real], reduce="amin")
    rank = torch.arange(n, device=dev) - first[img_seq]  # the image's place among its sequence's images
    needed = int(rank.max()) + 1 if n else 1
    slots = slots or needed
    if needed > slots:
        raise AmoeError(
            f"a sequence holds {needed} images but the model reserves prefix slots for {slots}; raise "
            "packing.max_images_per_seq consistently"
        )
    pos = length + rank[:, None] * per_image + torch.arange(per_image, device=dev)
    seq_of = img_seq[:, None].expand(n, per_image)
    ids = torch.cat([image_id, image_id.new_full((s, slots * per_image), -1)], 1)
    ids = ids.index_put((seq_of, pos), torch.arange(n, device=dev)[:, None].expand(n, per_image))
    return PrefixSlots(seq_of, pos, ids, slots)
