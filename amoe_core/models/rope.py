"""2D rotary position embedding on per-image patch coordinates (packed sequences, any aspect ratio).

Coordinates are normalised per image, aspect-preserving, as in DINOv3: patch (r, c) of an h x w grid sits at
((r + 0.5) / max(h, w), (c + 0.5) / max(h, w)) * 2 - 1, so a 2:1 image spans [-1, 1] on its long side and [-0.5,
0.5] on its short one, whatever its resolution. Half the rotated pairs of a head follow the row, half the column,
with DINOv3's periods base^(2i / (head_dim / 2)). Prefix and padding tokens get angle 0 (no rotation).
"""

from __future__ import annotations

import math

import torch
from timm.layers import apply_rot_embed
from torch import Tensor


def normalized_coords(coords: Tensor, sizes: Tensor) -> Tensor:
    """coords [..., 2] (row, col) in patches, sizes [..., 2] (rows, cols) of each token's image -> [..., 2] float."""
    side = sizes.max(-1, keepdim=True).values.clamp_min(1).to(torch.float32)
    return (coords.to(torch.float32) + 0.5) / side * 2 - 1


def rope_sin_cos(pos: Tensor, valid: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """pos [S, N, 2] normalised coords, valid [S, N] bool (False -> identity) -> sin, cos [S, 1, N, head_dim]."""
    n_freq = head_dim // 4
    periods = base ** (2 * torch.arange(n_freq, device=pos.device, dtype=torch.float32) / (head_dim // 2))
    angles = 2 * math.pi * pos[..., None] / periods  # [S, N, 2, head_dim / 4]
    angles = angles.flatten(-2) * valid[..., None]  # [S, N, head_dim / 2]
    angles = torch.cat([angles, angles], -1).unsqueeze(1)  # rotate-half layout
    return angles.sin(), angles.cos()


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """x [S, H, N, head_dim] rotated in the rotate-half layout (timm's helper)."""
    return apply_rot_embed(x, sin.to(x.dtype), cos.to(x.dtype), half=True)
