"""Per-image feature losses (AMoE / SigLino, arXiv 2512.20157): MSE against PHI-S-normalised teacher targets, where
every image counts once whatever its resolution: patch errors are averaged over the image's own tokens first.

Each function returns the per-image losses [n]; `global_image_mean` turns them into the batch term.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from amoe_core.models.packed_attention import segment_mean


def summary_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """[n, D] x [n, D] -> [n] mean squared error per image."""
    return (pred.float() - target.float()).square().mean(-1)


def patch_per_image(pred: Tensor, target: Tensor, token_image_id: Tensor, n: int) -> Tensor:
    """[T, D] x [T, D] (canonical packed order) -> [n]: each image's MSE averaged over its own tokens."""
    per_token = (pred.float() - target.float()).square().mean(-1)
    return segment_mean(per_token, token_image_id, n)


def registers_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """[n, R, D] x [n, R, D] -> [n]."""
    return (pred.float() - target.float()).square().mean((-1, -2))


def is_distributed(group: dist.ProcessGroup | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def global_image_count(n_local: int, device: torch.device, group: dist.ProcessGroup | None = None) -> Tensor:
    """Number of images in the global batch (all ranks)."""
    n = torch.tensor(float(n_local), device=device)
    if is_distributed(group):
        dist.all_reduce(n, group=group)
    return n


def global_image_mean(per_image: Tensor, n_global: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Mean over the images of the GLOBAL batch, in the form DDP needs.

    Each rank returns world_size * sum(local) / n_global. DDP averages gradients over ranks (divides by
    world_size), so the averaged gradient is exactly d/dθ [sum over all images / n_global], the single-process
    gradient of the global mean. The returned values averaged over ranks equal the global mean too (for logging).
    """
    world = dist.get_world_size(group) if is_distributed(group) else 1
    return per_image.sum() * world / n_global.clamp_min(1)
