"""A demo teacher's supervised training: a DINOv3 or SigLIP2 backbone (the real transformers classes, random init)
plus a classifier head (cosine by default: features separated by angle, what the kNN measures), with optional cheap
batch-level augmentation (random resized crop + flip as one `affine_grid` per batch) and a NaFlex-style patch grid
that changes from batch to batch, so a teacher sees the varied aspect ratios and token counts the student is
distilled at."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel

from amoe_core.config.demo_teachers import DemoTeacherConfig
from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, Teacher, freeze
from amoe_core.models.teachers.dinov3 import DINOv3Teacher
from amoe_core.models.teachers.siglip2 import Siglip2Teacher, to_patches
from amoe_core.progress import progress
from amoe_core.train.demo_teachers.folders import LabelledImages


def build_backbone(kind: str, cfg: DemoTeacherConfig) -> nn.Module:
    common = dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        patch_size=cfg.patch_size,
    )
    if kind == "dinov3":
        return DINOv3ViTModel(DINOv3ViTConfig(**common, image_size=cfg.image_size, num_register_tokens=cfg.registers))
    side = cfg.image_size // cfg.patch_size + cfg.grid_jitter  # learned position table, resized per image
    return Siglip2VisionModel(Siglip2VisionConfig(**common, num_patches=side * side))


def wrap(kind: str, backbone: nn.Module, name: str) -> Teacher:
    """The same `Teacher` wrappers `load_teacher` returns, around an in-memory backbone (random baseline)."""
    if kind == "dinov3":
        return DINOv3Teacher(name, freeze(backbone), backbone.config, IMAGENET_MEAN, IMAGENET_STD, kind="dinov3")
    return Siglip2Teacher(name, freeze(backbone), SIGLIP_MEAN, SIGLIP_STD)


def pooled(kind: str, backbone: nn.Module, x: Tensor, patch_size: int) -> Tensor:
    """Training forward on a normalised batch [B, 3, r*P, c*P] of one grid -> summary [B, D] with gradients."""
    if kind == "dinov3":
        return backbone(pixel_values=x).pooler_output
    b, _, h, w = x.shape
    rows, cols = h // patch_size, w // patch_size
    pixels = torch.stack([to_patches(im, patch_size) for im in x])
    mask = torch.ones(b, rows * cols, dtype=torch.long)
    shapes = torch.tensor([[rows, cols]] * b)
    return backbone(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes).pooler_output


def augment(images: Tensor, out_hw: tuple[int, int], min_scale: float, g: torch.Generator) -> Tensor:
    """Random resized crop (area in [min_scale, 1], aspect in [3/4, 4/3]) + horizontal flip, one affine_grid call."""
    b = images.shape[0]
    u = torch.rand(b, 5, generator=g)
    area = min_scale + (1 - min_scale) * u[:, 0]
    aspect = torch.exp((u[:, 1] - 0.5) * 2 * math.log(4 / 3))
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop half-extents in normalised [-1, 1] coordinates
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (2 * u[:, 2] - 1) * (1 - sw)
    ty = (2 * u[:, 3] - 1) * (1 - sh)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * flip, tx, sh, ty
    grid = F.affine_grid(theta, [b, 3, *out_hw], align_corners=False)
    return F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalise(x: Tensor, kind: str) -> Tensor:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if kind == "dinov3" else (SIGLIP_MEAN, SIGLIP_STD)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class CosineHead(nn.Module):
    """logits = scale * cos(feature, class weight) (NormFace, Wang et al. 2017): the features are trained to be
    separated by angle, which is exactly what the cosine kNN of the report measures."""

    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * dim**-0.5)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def build_head(cfg: DemoTeacherConfig, classes: int) -> nn.Module:
    if cfg.head == "cosine":
        return CosineHead(cfg.hidden_size, classes, cfg.cosine_scale)
    return nn.Linear(cfg.hidden_size, classes)


def train_classifier(
    kind: str, cfg: DemoTeacherConfig, data: LabelledImages, seed: int, max_steps: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Supervised training of backbone + classifier head (cosine or linear); returns the backbone and a few facts."""
    torch.manual_seed(seed)
    backbone = build_backbone(kind, cfg)
    head = build_head(cfg, len(data.classes))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data.labels)
    steps = max(1, math.ceil(cfg.epochs * n / cfg.batch_size))
    if max_steps is not None:
        steps = min(steps, max_steps)
    warmup = max(1, int(cfg.warmup_fraction * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    g = torch.Generator().manual_seed(seed)
    side, j = cfg.image_size // cfg.patch_size, cfg.grid_jitter
    order = torch.randperm(n, generator=g)
    pos, losses = 0, []
    backbone.train()
    t0 = time.perf_counter()
    for _ in progress(range(steps), desc=f"train {kind}", total=steps):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        rows, cols = (side + int(v) for v in torch.randint(-j, j + 1, (2,), generator=g))
        hw = (rows * cfg.patch_size, cols * cfg.patch_size)
        if cfg.augment:
            x = augment(data.images[idx], hw, cfg.min_crop_scale, g)
        else:
            x = F.interpolate(data.images[idx].float() / 255, size=hw, mode="bilinear", antialias=True)
        x = normalise(x, kind)
        logits = head(pooled(kind, backbone, x, cfg.patch_size))
        loss = F.cross_entropy(logits, data.labels[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10) :]
    facts = {"steps": steps, "train_seconds": round(time.perf_counter() - t0, 1), "final_loss": sum(tail) / len(tail)}
    return freeze(backbone), facts
