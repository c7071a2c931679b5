"""`amoe teachers demo`: train two small domain experts in the real transformers classes (no pretrained weights can
be downloaded on the project's machines).

- a `DINOv3ViTModel` classifier (head on CLS) on fashion-mnist train,
- a `Siglip2VisionModel` classifier (head on the MAP-pooled `pooler_output`) on the clip-art train split.

The head is a cosine classifier by default (features separated by angle, what the kNN measures). Optional cheap
batch-level augmentation (random resized crop + flip as one `affine_grid` per batch) and a NaFlex-style patch grid
that changes from batch to batch let a teacher see the varied aspect ratios and token counts the
student is distilled at. The backbone (not the classifier head) is saved with `save_pretrained` plus its image
processor config, atomically (tmp dir + rename); `report.json` gives each teacher's kNN accuracy (k=20, T=0.07,
cosine, weighted votes as in DINO, Caron et al. 2021) on its own domain's test split, trained vs the same
architecture with random weights, computed through `load_teacher` on the saved directory (the path distillation
uses), and the same two numbers on the OTHER teacher's domain: an expert is strong on its own domain only.

Threads: `demo_teachers.threads` (default 1) applies while the stage runs. These models are tiny (16-token images,
width 128): with 2 threads on 2 cores that other processes also use, each step waits for the slower thread and a
batch-128 SigLIP2 step took 1.4 s vs 0.09 s for batch 32 on 1 thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from amoe_core.config import DemoTeacherConfig, DemoTeachersConfig, Params, TeacherSpec
from amoe_core.errors import AmoeError, require_path
from amoe_core.eval.knn import knn_accuracy
from amoe_core.io import atomic_dir, atomic_write_json
from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, Teacher, freeze
from amoe_core.models.teachers.dinov3 import DINOv3Teacher
from amoe_core.models.teachers.hf import quiet_transformers
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.models.teachers.siglip2 import Siglip2Teacher, to_patches
from amoe_core.progress import progress

log = logging.getLogger(__name__)

KINDS = ("dinov3", "siglip2")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
INFO_FILE = "amoe_demo.json"  # inside each saved teacher directory: the inputs it was trained from + its kNN


# ---------------------------------------------------------------------------------------------------------- data
@dataclass
class LabelledImages:
    images: Tensor  # [N, 3, S, S] uint8, letterboxed onto white
    labels: Tensor  # [N] long
    classes: list[str]


def list_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """`root/<class>/<file>` -> (file, class index) pairs, both sorted, and the class names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [
        (f, c)
        for c, name in enumerate(classes)
        for f in sorted((root / name).iterdir())
        if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")
    ]
    if len(classes) < 2 or not items:
        raise AmoeError(
            f"{root}: expected one subfolder of images per class (at least 2 classes), found {len(classes)}"
        )
    return items, classes


def _load_square(path: Path, size: int) -> Tensor:
    """Decode, composite alpha onto white, letterbox to a white square (keeps the object's shape), resize."""
    with Image.open(path) as im:
        im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale
        if max(im.size) > 8 * size:
            im.thumbnail((4 * size, 4 * size))  # huge clip-art: reduce before converting
        rgba = im.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2), rgba)
    rgb = canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def load_folder(root: Path, size: int) -> LabelledImages:
    items, classes = list_folder(root)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda it: _load_square(it[0], size), items))
    return LabelledImages(torch.stack(images), torch.tensor([c for _, c in items]), classes)


def folder_fingerprint(root: Path) -> str:
    """Names and sizes of every file: changes when the split changes, cheap to compute."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            h.update(f"{Path(dirpath, name).relative_to(root)}:{os.path.getsize(Path(dirpath, name))}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- models
def build_backbone(kind: str, cfg: DemoTeacherConfig) -> nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel

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


# ---------------------------------------------------------------------------------------------------------- kNN
def stratified_subset(labels: Tensor, max_n: int, seed: int) -> Tensor:
    """At most `max_n` indices with every class kept in proportion (deterministic)."""
    if len(labels) <= max_n:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, round(len(idx) * max_n / len(labels)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(keep).sort().values


@torch.no_grad()
def embed(teacher: Teacher, images: Tensor, batch: int = 512) -> Tensor:
    """Teacher summaries of uint8 images [N, 3, S, S] (already at the evaluation resolution)."""
    out = []
    for start in range(0, len(images), batch):
        chunk = [im.float() / 255 for im in images[start : start + batch]]
        out.append(teacher(chunk).summary)
    return torch.cat(out)


def knn_eval(
    teacher: Teacher, train: LabelledImages, test: LabelledImages, top: DemoTeachersConfig, seed: int
) -> float:
    bank = stratified_subset(train.labels, top.knn_train_max, seed)
    feats = embed(teacher, train.images[bank])
    accs = knn_accuracy(
        feats.numpy(),
        train.labels[bank].numpy(),
        embed(teacher, test.images).numpy(),
        test.labels.numpy(),
        [top.knn_k],
        top.knn_temperature,
    )
    return accs[top.knn_k]


# ---------------------------------------------------------------------------------------------------------- saving
def save_teacher(kind: str, backbone: nn.Module, cfg: DemoTeacherConfig, out: Path, info: dict[str, Any]) -> None:
    """save_pretrained into a temporary sibling directory, then swap it in: `out` is never half written."""
    from transformers import DINOv3ViTImageProcessor, Siglip2ImageProcessor

    with atomic_dir(out, "demo_teachers.out", legacy=(INFO_FILE,)) as tmp:
        with quiet_transformers():
            backbone.save_pretrained(tmp)
            if kind == "dinov3":
                size = {"height": cfg.image_size, "width": cfg.image_size}
                proc = DINOv3ViTImageProcessor(size=size, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
            else:
                side = cfg.image_size // cfg.patch_size
                proc = Siglip2ImageProcessor(patch_size=cfg.patch_size, max_num_patches=side * side)
            proc.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------- stage
def other_kind(kind: str) -> str:
    """The other demo teacher: its domain is where this one should be weak (the specialisation check)."""
    return KINDS[1 - KINDS.index(kind)]


def inputs_of(kind: str, top: DemoTeachersConfig, seed: int) -> dict[str, Any]:
    """Everything a saved teacher and its report entry depend on: when unchanged, the stage skips it."""
    cfg: DemoTeacherConfig = getattr(top, kind)
    other: DemoTeacherConfig = getattr(top, other_kind(kind))
    return {
        "seed": seed,
        "config": cfg.model_dump(mode="json"),
        "knn": {"k": top.knn_k, "temperature": top.knn_temperature, "train_max": top.knn_train_max},
        "data": {"train": folder_fingerprint(cfg.train), "test": folder_fingerprint(cfg.test)},
        "other_domain": {"train": folder_fingerprint(other.train), "test": folder_fingerprint(other.test)},
    }


def previous_result(out: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    f = out / INFO_FILE
    if not (f.is_file() and (out / "config.json").is_file()):
        return None
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None
    return info if info.get("inputs") == inputs else None


def train_demo_teacher(
    kind: str, top: DemoTeachersConfig, seed: int, force: bool = False, max_steps: int | None = None
) -> dict[str, Any]:
    """Train (or reuse) one demo teacher; return its report entry."""
    cfg: DemoTeacherConfig = getattr(top, kind)
    require_path(f"demo_teachers.{kind}.train", cfg.train, "labelled folder")
    require_path(f"demo_teachers.{kind}.test", cfg.test, "labelled folder")
    other_name = other_kind(kind)
    require_path(f"demo_teachers.{other_name}.train", getattr(top, other_name).train, "labelled folder")
    require_path(f"demo_teachers.{other_name}.test", getattr(top, other_name).test, "labelled folder")
    out = top.out / kind
    inputs = inputs_of(kind, top, seed)
    if max_steps is not None:
        inputs["max_steps"] = max_steps
    if not force and (prev := previous_result(out, inputs)) is not None:
        log.info("teacher %s: %s is up to date, skipping", kind, out)
        return prev["result"]
    train, test = load_folder(cfg.train, cfg.image_size), load_folder(cfg.test, cfg.image_size)
    if train.classes != test.classes:
        raise AmoeError(f"demo_teachers.{kind}: train classes {train.classes} differ from test classes {test.classes}")
    log.info(
        "teacher %s: %d train / %d test images, %d classes",
        kind,
        len(train.labels),
        len(test.labels),
        len(train.classes),
    )
    backbone, facts = train_classifier(kind, cfg, train, seed, max_steps)
    trained = wrap(kind, backbone, kind)
    torch.manual_seed(seed)
    random = wrap(kind, build_backbone(kind, cfg), kind)
    trained_acc, random_acc = (knn_eval(t, train, test, top, seed) for t in (trained, random))
    # The same two models on the other teacher's domain (at this teacher's resolution): an expert is weak there.
    other: DemoTeacherConfig = getattr(top, other_name)
    o_train, o_test = load_folder(other.train, cfg.image_size), load_folder(other.test, cfg.image_size)
    o_trained, o_random = (knn_eval(t, o_train, o_test, top, seed) for t in (trained, random))
    result = {
        "path": str(out),
        "model": type(backbone).__name__,
        "classes": len(train.classes),
        "train_images": len(train.labels),
        "test_images": len(test.labels),
        "resolution": cfg.image_size,
        **facts,
        "knn": {
            "trained": trained_acc,
            "random": random_acc,
            "k": top.knn_k,
            "temperature": top.knn_temperature,
            "split": str(cfg.test),
        },
        "knn_other_domain": {"trained": o_trained, "random": o_random, "split": str(other.test)},
    }
    save_teacher(kind, backbone, cfg, out, {"inputs": inputs, "result": result})
    check_reload(kind, out, trained, test.images[:8])
    log.info(
        "teacher %s: kNN %.3f trained vs %.3f random; on %s: %.3f vs %.3f",
        kind,
        trained_acc,
        random_acc,
        other.test,
        o_trained,
        o_random,
    )
    return result


def check_reload(kind: str, out: Path, trained: Teacher, images: Tensor) -> None:
    """The saved directory, loaded the way distillation loads it, must give the features just evaluated."""
    loaded = load_teacher(TeacherSpec(name=kind, kind=kind, path=str(out)))
    a, b = embed(trained, images), embed(loaded, images)
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"{out}: reloaded teacher differs from the trained one (max diff {(a - b).abs().max():.2e})")


def run(params: Params, force: bool = False, max_steps: int | None = None) -> dict[str, Any]:
    """Train both demo teachers (skipping any whose inputs are unchanged) and write `<out>/report.json`."""
    top = params.demo_teachers
    before = torch.get_num_threads()
    if top.threads:
        torch.set_num_threads(top.threads)
    try:
        report = {kind: train_demo_teacher(kind, top, params.seed, force, max_steps) for kind in KINDS}
    finally:
        torch.set_num_threads(before)
    atomic_write_json(top.out / "report.json", report)
    return report
