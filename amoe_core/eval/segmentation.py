"""Semantic segmentation linear probe (the dinov2 / RADIO "linear" head, the released SigLino table's VOC column).

Datasets in the Pascal VOC layout, named `voc:DIR`:

    DIR/JPEGImages/<id>.jpg (or .png)      the images
    DIR/SegmentationClass/<id>.png         class index per pixel (palette or grey PNG), 255 = ignore
    DIR/ImageSets/Segmentation/train.txt   optional: the ids of the training split (val.txt: the test split);
                                           without it the train spec uses every image of its DIR, the test spec too
                                           (then they must name different DIRs)

Frozen patch features [g, g, D] -> BatchNorm + 1x1 conv -> bilinear upsampling to the label's own size ->
cross-entropy ignoring 255. mIoU: intersection and union summed over every image of the test split, IoU averaged
over the classes present (union > 0), plus pixel accuracy over labelled pixels.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from amoe_core.data.decode import to_rgb
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path

log = logging.getLogger(__name__)

IGNORE = 255
IMAGE_DIR, MASK_DIR, SPLIT_DIR = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class SegmentationSet:
    spec: str
    images: list[Path]
    masks: list[Path]

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        for p in self.images:
            h.update(f"\0{p}".encode())
        return h.hexdigest()[:16]

    def image(self, i: int, resolution: int) -> Tensor:
        """Image i as [3, r, r] float in [0, 1] (bicubic; transparency onto white, as the classification sets)."""
        try:
            with Image.open(self.images[i]) as im:
                im = to_rgb(im, (255, 255, 255)).resize((resolution, resolution), Image.Resampling.BICUBIC)
        except (OSError, ValueError) as e:
            raise AmoeError(f"{self.spec}: cannot decode image {self.images[i]} ({e}); remove or replace it") from None
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)

    def mask(self, i: int) -> Tensor:
        """Mask i as int64 [H, W] class indices (255 = ignore) at its own size: palette indices or grey values."""
        try:
            with Image.open(self.masks[i]) as m:
                if m.mode not in ("P", "L", "I", "I;16"):
                    raise ValueError(f"mode {m.mode}: expected a palette or grey PNG of class indices")
                arr = np.asarray(m).astype(np.int64)
        except (OSError, ValueError) as e:
            raise AmoeError(f"{self.spec}: cannot read mask {self.masks[i]} ({e}); fix or remove it") from None
        return torch.from_numpy(arr)


def load_voc(spec: str, role: str) -> SegmentationSet:
    """`voc:DIR` as its `role` split ("train" reads train.txt, "test" val.txt, when DIR has ImageSets)."""
    kind, sep, raw = spec.partition(":")
    if kind != "voc" or not sep or not raw:
        raise AmoeError(f"segmentation dataset {spec!r}: expected voc:DIR (JPEGImages/, SegmentationClass/)")
    root = Path(raw)
    if not (root / MASK_DIR).is_dir() or not (root / IMAGE_DIR).is_dir():
        raise AmoeError(f"{spec}: {root} needs {IMAGE_DIR}/ and {MASK_DIR}/ folders (the Pascal VOC layout)")
    split = root / SPLIT_DIR / ("train.txt" if role == "train" else "val.txt")
    if split.is_file():
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(p.stem for p in (root / MASK_DIR).glob("*.png"))
    images, masks = [], []
    for i in ids:
        found = [root / IMAGE_DIR / f"{i}{s}" for s in IMAGE_SUFFIXES if (root / IMAGE_DIR / f"{i}{s}").is_file()]
        mask = root / MASK_DIR / f"{i}.png"
        if not found or not mask.is_file():
            raise AmoeError(f"{spec}: id {i!r} ({split.name if split.is_file() else 'masks'}) lacks an image or mask")
        images.append(found[0])
        masks.append(mask)
    if not images:
        raise AmoeError(f"{spec}: no images with masks in {root}")
    return SegmentationSet(spec, images, masks)


def load_voc_pair(train_spec: str, test_spec: str) -> tuple[SegmentationSet, SegmentationSet]:
    train, test = load_voc(train_spec, "train"), load_voc(test_spec, "test")
    if set(train.images) & set(test.images):
        raise AmoeError(
            f"{test_spec}: shares images with {train_spec}; add ImageSets/Segmentation/train.txt and val.txt or "
            "give the test split its own DIR"
        )
    return train, test


# ---------------------------------------------------------------------------------------------------------- metrics
def confusion(pred: Tensor, label: Tensor, n_classes: int) -> Tensor:
    """[n_classes, n_classes] counts, rows = label, cols = prediction; ignore pixels (and labels >= n) left out."""
    keep = label < n_classes
    idx = label[keep] * n_classes + pred[keep].clamp(0, n_classes - 1)
    return torch.bincount(idx.flatten(), minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(conf: Tensor) -> dict[str, float]:
    """mIoU over the classes present (label or prediction: union > 0) and pixel accuracy, from summed counts."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    miou = (inter[present] / union[present]).mean().item() if present.any() else 0.0
    total = conf.sum().item()
    return {"miou": miou, "pixel_acc": inter.sum().item() / total if total else 0.0}


# ---------------------------------------------------------------------------------------------------------- features
Patches = Callable[[Tensor], dict[str, Tensor]]  # images [B, 3, r, r] -> {feature: [B, g, g, D]}


def extract_patches(patches: Patches, data: SegmentationSet, resolution: int, batch_size: int) -> dict[str, np.ndarray]:
    """Patch features of every image: {feature: float32 [n, g, g, D]}."""
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(data), batch_size):
        images = torch.stack([data.image(i, resolution) for i in range(start, min(start + batch_size, len(data)))])
        for name, f in patches(images).items():
            chunks.setdefault(name, []).append(f.float().cpu().numpy())
    return {n: np.concatenate(c).astype(np.float32) for n, c in chunks.items()}


def cached_patches(path: Path, compute: Callable[[], np.ndarray], n: int) -> np.ndarray:
    """A teacher's patch features read from `path` or computed once and written there (atomic), as for summaries."""
    if path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 4 and len(arr) == n:
                return arr
        except (OSError, ValueError):
            pass
        log.warning("ignoring unreadable feature cache %s", path)
    arr = compute()
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)
    return arr


# ---------------------------------------------------------------------------------------------------------- probe
class LinearSegHead(nn.Module):
    """BatchNorm over the feature channels, then a 1x1 convolution to class logits (dinov2's linear head)."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(dim), nn.Conv2d(dim, n_classes, 1)

    def forward(self, feats: Tensor) -> Tensor:  # [B, g, g, D] -> [B, C, g, g]
        return self.conv(self.bn(feats.permute(0, 3, 1, 2)))


def n_classes_of(masks: list[Tensor]) -> int:
    top = max((int(m[m != IGNORE].max()) for m in masks if (m != IGNORE).any()), default=-1)
    if top < 1:
        raise AmoeError("segmentation: the training masks hold fewer than two classes (255 is ignore)")
    return top + 1


def segmentation_probe(
    train_feats: np.ndarray,
    train_masks: list[Tensor],
    test_feats: np.ndarray,
    test_masks: list[Tensor],
    n_classes: int,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, float]:
    """Train the linear head on the train split (AdamW, cosine schedule) and score it on the whole test split."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = LinearSegHead(train_feats.shape[-1], n_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(train_feats) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    x_train = torch.from_numpy(train_feats)
    head.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(batch_size):
            logits = head(x_train[idx].to(device))
            total, labelled = logits.new_zeros(()), 0
            for j, i in enumerate(idx.tolist()):  # each label at its own size
                target = train_masks[i].to(device)[None]
                up = _upsample(logits[j], target.shape[1:])[None]
                total = total + F.cross_entropy(up, target, ignore_index=IGNORE, reduction="sum")
                labelled += int((target != IGNORE).sum())
            loss = total / max(labelled, 1)  # mean over labelled pixels of the batch (an all-ignore image adds 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    conf = torch.zeros(n_classes, n_classes, dtype=torch.long)
    x_test = torch.from_numpy(test_feats)
    with torch.no_grad():
        for idx in torch.arange(len(x_test)).split(batch_size):
            logits = head(x_test[idx].to(device))
            for j, i in enumerate(idx.tolist()):
                pred = _upsample(logits[j], test_masks[i].shape).argmax(0).cpu()
                conf += confusion(pred, test_masks[i], n_classes)
    return scores(conf)


def _upsample(logits: Tensor, size: torch.Size) -> Tensor:
    """[C, g, g] -> [C, H, W] bilinear (the label's own size); the loss and the metric see every labelled pixel."""
    return F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
