"""SigLIP2 (`Siglip2VisionModel`, NaFlex variant) as a frozen teacher.

NaFlex inputs: each image is cut into its own patch grid (`pixel_values [B, N, 3*P*P]`, row-major patches in
(py, px, c) layout), padded to the longest image of the forward batch with `pixel_attention_mask`, and
`spatial_shapes [B, 2]` gives each grid so the learned position embeddings are resized per image. There is no CLS
token: summary = `pooler_output`, the multihead attention-pooling (MAP) head. AMoE (arXiv 2512.20157) produces the
student's SigLIP2 summary by passing its SigLIP2-space tokens through a frozen copy of that head: `summary_head`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import (
    FORWARD_TOKENS,
    SIGLIP_MEAN,
    SIGLIP_STD,
    Teacher,
    TeacherOutput,
    freeze,
    token_chunks,
)
from amoe_core.models.teachers.hf import load_typed, read_normalisation, resolve_source

MODEL_TYPES = ("siglip2", "siglip2_vision_model")
# Padding a NaFlex batch may add to its real tokens: a training step's 110 log-uniform 4-64 token images through the
# demo SigLIP2 on one CPU thread took 0.27 s as one padded batch, 0.12 s in batches within 25% padding (outputs equal
# up to summation order, 2e-6); on a GPU the batches stay large when the step is.
NAFLEX_MAX_PADDING = 0.25


def to_patches(image: Tensor, patch_size: int) -> Tensor:
    """[C, r*P, c*P] -> [r*c, P*P*C], row-major patches, (py, px, c) inside a patch (SigLIP2's layout)."""
    c, h, w = image.shape
    p = patch_size
    x = image.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
    return x.reshape((h // p) * (w // p), p * p * c)


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


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    """A `Siglip2VisionModel` from a vision-only or a full (image-text) SigLIP2 checkpoint."""
    from transformers import Siglip2VisionModel  # transformers: imported when a teacher loads (start-up time)

    model = load_typed(spec, device, Siglip2VisionModel, MODEL_TYPES, " (the NaFlex variant)")
    mean, std = read_normalisation(resolve_source(spec.name, spec.path), (SIGLIP_MEAN, SIGLIP_STD))
    return Siglip2Teacher(spec.name, model, mean, std)
