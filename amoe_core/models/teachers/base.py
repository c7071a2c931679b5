"""The frozen-teacher interface: images in, summary + patch tokens (+ registers) out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TeacherOutput:
    summary: Tensor  # [n_images, D]
    patches: Tensor  # [n_tokens, D], canonical packed order (see amoe_core.data.packed)
    registers: Tensor | None  # [n_images, R, D] or None when the teacher has no registers


class Teacher(nn.Module):
    """A frozen vision encoder that knows its own input normalisation and patch size.

    `forward(images)` takes a list of [3, H, W] float images in [0, 1] whose sides are multiples of the *student*
    patch grid; the teacher resizes each to the same patch grid at its own patch size, so its patch tokens align
    one-to-one with the student's.
    """

    name: str
    kind: str
    patch_size: int
    dim: int
    num_registers: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def forward(self, images: list[Tensor], grid: Tensor | None = None) -> TeacherOutput:  # pragma: no cover
        raise NotImplementedError

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: always eval mode

    @torch.no_grad()
    def embed(self, images: list[Tensor]) -> Tensor:
        return self(images).summary
