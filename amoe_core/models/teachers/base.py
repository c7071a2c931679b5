"""The frozen-teacher interface: images in, summary + patch tokens (+ registers) out."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
FORWARD_TOKENS = 65536  # (padded) tokens per teacher forward batch: bounds activation memory, not the work


@dataclass
class TeacherOutput:
    summary: Tensor  # [n_images, D]
    patches: Tensor  # [n_tokens, D], canonical packed order (see amoe_core.data.packed)
    registers: Tensor | None  # [n_images, R, D] or None when the teacher has no registers


class Teacher(nn.Module):
    """A frozen vision encoder that knows its own input normalisation and patch size.

    `forward(images)` takes a list of [3, H, W] float images in [0, 1] whose sides are multiples of the *student*
    patch size (`student_patch_size`, 16 by default); the teacher resizes each to the same patch grid at its own
    patch size, so its patch tokens align one-to-one with the student's. `grid` ([n, 2] rows, cols) may be given
    explicitly; otherwise it is read from the image sides. Outputs are float32 whatever the compute dtype.
    """

    name: str
    kind: str
    patch_size: int
    dim: int
    num_registers: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    student_patch_size: int = 16
    summary_head: nn.Module | None  # set in __init__ (a class default would shadow the registered submodule)

    @abstractmethod
    def forward(self, images: list[Tensor], grid: Tensor | None = None) -> TeacherOutput:
        """Summary, patch tokens (canonical packed order) and registers of `images`."""

    def forward_packed(self, batch: PackedBatch) -> TeacherOutput:
        """The outputs for `batch.images` (canonical order). Kinds that can run the step's packed sequences
        themselves (siglip2, dinov3: one forward per step) override this; others take the per-size path."""
        return self(batch.images, batch.image_sizes)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: always eval mode

    # ----------------------------------------------------------------------------------------------- shared helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def grids(self, images: list[Tensor], grid: Tensor | None = None) -> list[tuple[int, int]]:
        """(rows, cols) of each image on the student's patch grid."""
        if not images:
            raise AmoeError(f"teacher {self.name!r}: forward needs at least one image")
        if grid is not None:
            if grid.shape != (len(images), 2):
                raise AmoeError(f"teacher {self.name!r}: grid must be [{len(images)}, 2], got {list(grid.shape)}")
            return [(int(r), int(c)) for r, c in grid.tolist()]
        p = self.student_patch_size
        out = []
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[0] != 3:
                raise AmoeError(f"teacher {self.name!r}: image {i} must be [3, H, W], got {list(im.shape)}")
            h, w = im.shape[-2:]
            if h % p or w % p or h < p or w < p:
                raise AmoeError(
                    f"teacher {self.name!r}: image {i} is {h}x{w}; sides must be positive multiples of the student "
                    f"patch size {p}"
                )
            out.append((h // p, w // p))
        return out

    def to_teacher_input(self, image: Tensor, rows: int, cols: int) -> Tensor:
        """Resize one [3, H, W] image in [0, 1] to the teacher's (rows*P, cols*P) and normalise it."""
        x = image.to(self.device, torch.float32)
        size = (rows * self.patch_size, cols * self.patch_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def packed_pixels(self, batch: PackedBatch) -> Tensor:
        """The teacher's normalised input in the batch's packed layout, [S, L, 3*P*P] (P = the teacher's patch size,
        (py, px, c) inside a patch), zeros at padding: each image as `to_teacher_input` makes it."""
        real = batch.image_id >= 0
        width = 3 * self.patch_size**2
        if batch.patches.shape[-1] == width:  # same patch size: the batch's patches are the image's, unresized
            x = batch.patches.to(self.device, torch.float32)
            mean = torch.tensor(self.mean, device=x.device).repeat(self.patch_size**2)  # channel varies fastest
            std = torch.tensor(self.std, device=x.device).repeat(self.patch_size**2)
            return torch.where(real[..., None], (x - mean) / std, 0.0).to(self.dtype)
        grids = self.grids(batch.images, batch.image_sizes)
        x = torch.zeros(*batch.image_id.shape, width, device=self.device, dtype=self.dtype)
        tokens = [
            to_patches(self.to_teacher_input(im, r, c), self.patch_size) for im, (r, c) in zip(batch.images, grids)
        ]
        return x.index_put((real,), torch.cat(tokens))

    def forward_by_size(
        self,
        images: list[Tensor],
        grid: Tensor | None,
        encode: Callable[[Tensor, int, int], tuple[Tensor, Tensor, int]],
    ) -> TeacherOutput:
        """Run equal-grid images as dense batches of at most `FORWARD_TOKENS` tokens and reassemble canonical order.

        `encode(x [b, 3, rows*P, cols*P], rows, cols) -> (summary [b, D], tokens [b, prefix + rows*cols, D], prefix)`
        where the last `num_registers` prefix tokens are the registers.
        """
        grids = self.grids(images, grid)
        n, r_ = len(images), self.num_registers
        summary: list[Tensor | None] = [None] * n
        patches: list[Tensor | None] = [None] * n
        registers: list[Tensor | None] = [None] * n
        for (rows, cols), idx in group_by_size(grids).items():
            for chunk in token_chunks(idx, rows * cols, FORWARD_TOKENS):
                x = torch.stack([self.to_teacher_input(images[i], rows, cols) for i in chunk])
                pooled, tokens, prefix = encode(x, rows, cols)
                for j, i in enumerate(chunk):
                    summary[i] = pooled[j]
                    patches[i] = tokens[j, prefix:]
                    registers[i] = tokens[j, prefix - r_ : prefix] if r_ else None
        return TeacherOutput(
            summary=torch.stack(summary),  # type: ignore[arg-type]
            patches=torch.cat(patches),  # type: ignore[arg-type]
            registers=torch.stack(registers) if r_ else None,  # type: ignore[arg-type]
        )


def to_patches(image: Tensor, patch_size: int) -> Tensor:
    """[C, r*P, c*P] -> [r*c, P*P*C], row-major patches, (py, px, c) inside a patch (SigLIP2's and timm's layout)."""
    c, h, w = image.shape
    p = patch_size
    x = image.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
    return x.reshape((h // p) * (w // p), p * p * c)


def freeze(module: nn.Module) -> nn.Module:
    """Frozen teacher weights: no gradients, eval mode (dropout/drop-path off)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def group_by_size(grids: list[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Image indices per distinct patch grid, so equal-size images run as one dense batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grids):
        groups.setdefault(g, []).append(i)
    return groups


def token_chunks(
    indices: list[int], tokens_each: int | list[int], budget: int, max_padding: float | None = None
) -> list[list[int]]:
    """Split `indices` into consecutive forward batches of at most `budget` (padded) tokens each (>= 1 image).

    With `max_padding` (for images sorted by length, padded to the longest of their batch), a batch also ends
    before its padded size would exceed (1 + max_padding) x its real tokens: one batch of log-uniform 4-64 token
    images is ~2.5x padding, and the attention and MLP work on padding is wasted.
    """
    out: list[list[int]] = []
    cur: list[int] = []
    longest = real = 0
    for k, i in enumerate(indices):
        t = tokens_each if isinstance(tokens_each, int) else tokens_each[k]
        padded = (len(cur) + 1) * max(longest, t)
        too_padded = max_padding is not None and padded > (1 + max_padding) * (real + t)
        if cur and (padded > budget or too_padded):
            out.append(cur)
            cur, longest, real = [], 0, 0
        cur.append(i)
        longest, real = max(longest, t), real + t
    if cur:
        out.append(cur)
    return out
