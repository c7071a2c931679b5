"""SigLIP2 (`Siglip2VisionModel`, NaFlex variant) as a frozen teacher.

NaFlex inputs: each image is cut into its own patch grid (`pixel_values [B, N, 3*P*P]`, row-major patches in
(py, px, c) layout), padded to the longest image of the forward batch with `pixel_attention_mask`, and
`spatial_shapes [B, 2]` gives each grid so the learned position embeddings are resized per image. There is no CLS
token: summary = `pooler_output`, the multihead attention-pooling (MAP) head. AMoE (arXiv 2512.20157) produces the
student's SigLIP2 summary by passing its SigLIP2-space tokens through a frozen copy of that head: `summary_head`.

Packed forward (`forward_packed`, what distillation runs): the step's packed sequences in one forward through the
model's own modules, block-diagonal attention (packed_attention), each patch's position embedding taken from the
learned table resized to its own image's grid by transformers' `Siglip2VisionEmbeddings.resize_positional_embeddings`
(once per distinct grid), and the MAP head over each image's tokens alone. `forward(images)` keeps the padded
NaFlex batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError
from amoe_core.models.packed_attention import PackedMask, packed_attention, segment_count
from amoe_core.models.teachers.base import (
    FORWARD_TOKENS,
    SIGLIP_MEAN,
    SIGLIP_STD,
    Teacher,
    TeacherOutput,
    freeze,
    to_patches,
    token_chunks,
)
from amoe_core.models.teachers.hf import load_typed, read_normalisation, resolve_source

MODEL_TYPES = ("siglip2", "siglip2_vision_model")
# Padding a NaFlex batch may add to its real tokens: a training step's 110 log-uniform 4-64 token images through the
# demo SigLIP2 on one CPU thread took 0.27 s as one padded batch, 0.12 s in batches within 25% padding (outputs equal
# up to summation order, 2e-6); on a GPU the batches stay large when the step is.
NAFLEX_MAX_PADDING = 0.25


class Siglip2SummaryHead(nn.Module):
    """SigLIP2's frozen MAP head as `head(tokens [n, N, D], mask [n, N] (True/1 = real token)) -> [n, D]`.

    Parameters are frozen but gradients flow to `tokens`, so the student can be trained through it. Tokens are cast
    to the head's dtype and the result back to theirs.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = freeze(head)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        # The head's own forward hands the mask to transformers' mask helpers, which (transformers 5) drop a
        # key-padding mask here, so padded tokens would be pooled too; the same computation with the mask applied:
        head, dtype = self.head, self.head.probe.dtype
        x = tokens.to(dtype)
        probe = head.probe.expand(x.shape[0], -1, -1)
        bias = None
        if mask is not None:
            keep = mask.to(device=x.device, dtype=torch.bool)
            bias = torch.zeros(keep.shape, dtype=dtype, device=x.device).masked_fill(~keep, torch.finfo(dtype).min)
            bias = bias[:, None, None, :].expand(-1, head.num_heads, 1, -1).reshape(-1, 1, keep.shape[1])
        h = head.attention(probe, x, x, attn_mask=bias, need_weights=False)[0]
        h = h + head.mlp(head.layernorm(h))
        return h[:, 0].to(tokens.dtype)

    def train(self, mode: bool = True) -> Siglip2SummaryHead:
        return super().train(False)


def summary_head(config: dict[str, Any]) -> Siglip2SummaryHead:
    """A frozen MAP head built from `Siglip2VisionConfig` fields (a saved student's spec, the release's fixed head);
    its weights come from the checkpoint loaded next."""
    # transformers: imported where a head is built (about a second of start-up for commands that never build one)
    from transformers import Siglip2VisionConfig
    from transformers.models.siglip2.modeling_siglip2 import Siglip2MultiheadAttentionPoolingHead

    return Siglip2SummaryHead(Siglip2MultiheadAttentionPoolingHead(Siglip2VisionConfig(**config)))


class Siglip2Teacher(Teacher):
    def __init__(
        self,
        name: str,
        model: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        cfg = model.config
        if not getattr(cfg, "vision_use_head", True):
            raise AmoeError(f"teacher {name!r}: this SigLIP2 checkpoint has no pooling head (vision_use_head=False)")
        self.name, self.kind, self.model = name, "siglip2", model
        self.patch_size, self.dim, self.num_registers = int(cfg.patch_size), int(cfg.hidden_size), 0
        self.mean, self.std = mean, std
        self.summary_head = Siglip2SummaryHead(model.head)
        self.eval()

    @torch.no_grad()
    def forward(self, images: list[Tensor], grid: Tensor | None = None) -> TeacherOutput:
        grids = self.grids(images, grid)
        n = len(images)
        lengths = [r * c for r, c in grids]
        order = sorted(range(n), key=lambda i: lengths[i])  # similar lengths share a batch: little padding
        summary: list[Tensor | None] = [None] * n
        patches: list[Tensor | None] = [None] * n
        width = 3 * self.patch_size**2
        for chunk in token_chunks(order, [lengths[i] for i in order], FORWARD_TOKENS, NAFLEX_MAX_PADDING):
            longest = max(lengths[i] for i in chunk)
            pixels = torch.zeros(len(chunk), longest, width, device=self.device, dtype=self.dtype)
            mask = torch.zeros(len(chunk), longest, device=self.device, dtype=torch.long)
            for j, i in enumerate(chunk):
                r, c = grids[i]
                pixels[j, : r * c] = to_patches(self.to_teacher_input(images[i], r, c), self.patch_size)
                mask[j, : r * c] = 1
            shapes = torch.tensor([grids[i] for i in chunk], device=self.device, dtype=torch.long)
            out = self.model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
            for j, i in enumerate(chunk):
                summary[i] = out.pooler_output[j].float()
                patches[i] = out.last_hidden_state[j, : lengths[i]].float()
        return TeacherOutput(
            summary=torch.stack(summary),  # type: ignore[arg-type]
            patches=torch.cat(patches),  # type: ignore[arg-type]
            registers=None,
        )

    @torch.no_grad()
    def forward_packed(self, batch: PackedBatch) -> TeacherOutput:
        m = self.model
        emb, image_id = m.embeddings, batch.image_id.to(self.device)
        real, n = image_id >= 0, batch.n_images
        x = emb.patch_embedding(self.packed_pixels(batch))

        # Position embeddings: the table resized per distinct grid, then each patch's row of its image's grid.
        sizes = batch.image_sizes.to(self.device)
        grids, which = torch.unique(sizes, dim=0, return_inverse=True)
        side = emb.position_embedding_size
        table = emb.position_embedding.weight.reshape(side, side, -1)
        resized = emb.resize_positional_embeddings(table, grids, int(grids.prod(-1).max()))  # [G, longest, D]
        img = image_id.clamp_min(0)
        coords = batch.coords.to(self.device)
        index = coords[..., 0] * sizes[img, 1] + coords[..., 1]
        x = x + torch.where(real[..., None], resized[which[img], index], 0)

        mask = PackedMask(image_id)  # once per forward, shared by every layer
        for layer in m.encoder.layers:
            x = _layer(layer, x, mask)
        patches = m.post_layernorm(x)[real]  # canonical order
        tokens, keep = per_image(patches, image_id[real], n)
        return TeacherOutput(summary=self.summary_head(tokens, keep).float(), patches=patches.float(), registers=None)


def _layer(layer: Any, x: Tensor, mask: PackedMask) -> Tensor:
    """`Siglip2EncoderLayer.forward` with packed attention, through the layer's own modules."""
    att = layer.self_attn
    s, n, d = x.shape
    h = layer.layer_norm1(x)
    q, k, v = (
        p(h).view(s, n, att.num_heads, att.head_dim).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj)
    )
    o = packed_attention(q, k, v, mask)  # scale head_dim**-0.5, as the model's
    x = x + att.out_proj(o.transpose(1, 2).reshape(s, n, d))
    return x + layer.mlp(layer.layer_norm2(x))


def per_image(tokens: Tensor, token_image_id: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Canonical-order tokens [T, D] -> each image's tokens [n, longest, D] and their mask [n, longest] (True = real)."""
    counts = segment_count(token_image_id, n)
    start = torch.cumsum(counts, 0) - counts  # canonical order: each image's tokens are contiguous
    pos = torch.arange(tokens.shape[0], device=tokens.device) - start[token_image_id]
    out = tokens.new_zeros(n, int(counts.max()), tokens.shape[-1]).index_put((token_image_id, pos), tokens)
    keep = torch.zeros(out.shape[:2], dtype=torch.bool, device=tokens.device)
    return out, keep.index_put((token_image_id, pos), torch.ones_like(pos, dtype=torch.bool))


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    """A `Siglip2VisionModel` from a vision-only or a full (image-text) SigLIP2 checkpoint."""
    from transformers import Siglip2VisionModel  # transformers: imported when a teacher loads (start-up time)

    model = load_typed(spec, device, Siglip2VisionModel, MODEL_TYPES, " (the NaFlex variant)")
    mean, std = read_normalisation(resolve_source(spec.name, spec.path), (SIGLIP_MEAN, SIGLIP_STD))
    return Siglip2Teacher(spec.name, model, mean, std)
