"""`PackedBatch`: the unit the student trains on (token-balanced batching, AMoE / SigLino arXiv 2512.20157).

S sequences of exactly L = c_max patch tokens each hold several whole images; `image_id` says which image a token
belongs to (-1 = padding at the end of a sequence). Canonical token order: flattening [S, L] and dropping padding
gives every image's tokens contiguous and row-major, images in increasing `image_id` (ids are assigned in order of
appearance). Student patch outputs `[n_tokens, D]` and teacher patch targets use this same order, so per-token
losses need no index juggling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class PackedBatch:
    patches: Tensor  # [S, L, P*P*C] float in [0, 1], timm Patchify / SigLIP2 layout (row-major, (py, px, c))
    coords: Tensor  # [S, L, 2] long (row, col) of each patch within its own image; 0 for padding
    image_id: Tensor  # [S, L] long in [0, n_images), -1 for padding
    image_sizes: Tensor  # [n_images, 2] long (rows, cols) in patches
    images: list[Tensor] = field(default_factory=list)  # teacher view: [3, rows*P, cols*P] float in [0, 1] per image
    keys: list[str] = field(default_factory=list)  # manifest key per image
    labels: Tensor | None = None  # [n_images] long when known, else None

    @property
    def n_images(self) -> int:
        return int(self.image_sizes.shape[0])

    @property
    def n_tokens(self) -> int:
        return int((self.image_id >= 0).sum())

    @property
    def token_image_id(self) -> Tensor:
        """[n_tokens] image id of each real token, canonical order."""
        flat = self.image_id.reshape(-1)
        return flat[flat >= 0]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            patches=self.patches.to(device, non_blocking=True),
            coords=self.coords.to(device, non_blocking=True),
            image_id=self.image_id.to(device, non_blocking=True),
            image_sizes=self.image_sizes.to(device, non_blocking=True),
            # the teacher view stays on the host: only per-size teachers read it, each moving its input to its own
            # device (Teacher.to_teacher_input); packed teachers and a teacher cache never do, so a step copies its
            # pixels to the GPU once (as patches), not twice
            images=self.images,
            keys=self.keys,
            labels=None if self.labels is None else self.labels.to(device),
        )
