"""Feature extraction for evaluation, by feature name (eval.json's keys):

- "teacher:<t>"      the teacher's own summary (CLS or pooling head), raw teacher space;
- "student:<t>"      the student's adapted summary for teacher t (its adapters predict t's raw space);
- "student:native"   the student's own summary (its CLS output);
- "student:ensemble" all teachers' spaces together: kNN uses the released SigLino protocol (each student:<t> votes,
                     fused with entropy weights, amoe_core.eval.knn.knn_ensemble_accuracy); the linear probe uses
                     the L2-normalised student:<t> summaries concatenated.

An *extractor* is a callable `images [B, 3, r, r] -> {name: Feats}`; the student and each teacher have one, so the
evaluation code is the same for both. Teacher summaries are cached per dataset split, resolution and teacher
checkpoint under `evaluate.cache` (teachers are frozen: recomputing them for every student run would dominate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from amoe_core.config.teachers import TeacherSpec
from amoe_core.data.packed import PackedBatch
from amoe_core.data.packing import assemble
from amoe_core.data.resolution import patchify
from amoe_core.eval.datasets import LabelledSet
from amoe_core.eval.knn import l2_normalise
from amoe_core.io import atomic_path
from amoe_core.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Feats:
    summary: Tensor  # [B, D]
    patches: Tensor | None = None  # [B, N, D] (images of one batch share a size) or None


Extractor = Callable[[Tensor], dict[str, Feats]]


def teacher_extractor(name: str, teacher: torch.nn.Module) -> Extractor:
    """ "teacher:<name>" summary and patches ([B, N, D], canonical row-major order per image)."""

    @torch.no_grad()
    def extract(images: Tensor) -> dict[str, Feats]:
        out = teacher(list(images))
        b = images.shape[0]
        return {
            f"teacher:{name}": Feats(
                out.summary.float().cpu(), out.patches.float().cpu().reshape(b, -1, out.patches.shape[-1])
            )
        }

    return extract


def pack_equal_images(images: Tensor, patch_size: int, c_max: int, max_images_per_seq: int) -> PackedBatch:
    """Equal-size images -> a PackedBatch, as many whole images per c_max-token sequence as fit (at least one: a
    larger image gets a longer sequence). Same layout as training batches (amoe_core.data.packing.assemble)."""
    items = {}
    for i, im in enumerate(images):
        patches, coords = patchify(im, patch_size)
        grid = (im.shape[1] // patch_size, im.shape[2] // patch_size)
        items[i] = {"patches": patches, "coords": coords, "grid": grid, "image": im, "key": str(i), "label": -1}
    n_tok = items[0]["patches"].shape[0]
    per_seq = max(1, min(max_images_per_seq, c_max // n_tok))
    plan = [list(range(s, min(s + per_seq, len(images)))) for s in range(0, len(images), per_seq)]
    return assemble(plan, items, seq_len=max(c_max, n_tok), n_seqs=None)


def student_extractor(student: torch.nn.Module, patch_size: int, c_max: int, max_images_per_seq: int) -> Extractor:
    """ "student:<t>" (adapted features, teacher t's raw space) and "student:native" summaries and patches, through
    packed batches as in training."""
    device = next(student.parameters()).device

    @torch.no_grad()
    def extract(images: Tensor) -> dict[str, Feats]:
        b = images.shape[0]
        batch = pack_equal_images(images, patch_size, c_max, max_images_per_seq).to(device)
        out = student(batch)
        feats = {
            "student:native": Feats(
                out.summary.float().cpu(), out.patches.float().cpu().reshape(b, -1, out.patches.shape[-1])
            )
        }
        for name, raw in out.teachers.items():
            feats[f"student:{name}"] = Feats(
                raw.summary.float().cpu(), raw.patches.float().cpu().reshape(b, -1, raw.patches.shape[-1])
            )
        return feats

    return extract


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The released SigLino image processor's size rule: each side rounded to a multiple of `factor`; if the area
    then exceeds `max_pixels` (falls below `min_pixels`), both sides are scaled by one factor to fit and rounded down
    (up) to multiples of `factor`. Aspect ratio is kept up to that rounding."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def ensemble(per_teacher: list[np.ndarray]) -> np.ndarray:
    """student:ensemble: each teacher-space summary L2-normalised, then concatenated (equal say per teacher)."""
    return np.concatenate([l2_normalise(x) for x in per_teacher], axis=1)


def extract_summaries(
    extractor: Extractor, data: LabelledSet, resolution: int, batch_size: int, desc: str = ""
) -> dict[str, np.ndarray]:
    """Summaries of every image of `data` at `resolution`: {name: float32 [n, D]}."""
    chunks: dict[str, list[np.ndarray]] = {}
    with progress(total=len(data), desc=desc or f"features {resolution}px", unit="img") as bar:
        for images in data.batches(resolution, batch_size):
            for name, f in extractor(images).items():
                chunks.setdefault(name, []).append(f.summary.float().cpu().numpy())
            bar.update(len(images))
    return {name: np.concatenate(c).astype(np.float32) for name, c in chunks.items()}


def teacher_fingerprint(spec: TeacherSpec) -> str:
    """Changes when the teacher's checkpoint changes (file names, sizes and mtimes), so stale caches are not used."""
    h = hashlib.sha256(f"{spec.kind}\0{spec.path}".encode())
    root = Path(spec.path)
    if root.exists():
        files = sorted(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())
        for p in files:
            st = p.stat()
            h.update(f"\0{p.relative_to(root) if root.is_dir() else p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_teacher_summaries(
    cache: Path,
    dataset: str,
    split: str,
    data: LabelledSet,
    resolution: int,
    spec: TeacherSpec,
    load: Callable[[], Extractor],
    batch_size: int,
) -> np.ndarray:
    """teacher:<t> summaries of a split at a resolution, read from the cache or computed once and cached (atomic)."""
    path = (
        cache
        / dataset
        / f"{split}-{data.fingerprint()}"
        / f"{resolution}px"
        / f"{spec.name}-{teacher_fingerprint(spec)}.npy"
    )
    if path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 2 and len(arr) == len(data):
                return arr
        except (OSError, ValueError):
            pass
        log.warning("ignoring unreadable feature cache %s", path)
    feats = extract_summaries(
        load(), data, resolution, batch_size, desc=f"{spec.name} {dataset}/{split} {resolution}px"
    )
    arr = feats[f"teacher:{spec.name}"]
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)
    meta = {
        "dataset": data.spec,
        "images": len(data),
        "resolution": resolution,
        "teacher": spec.model_dump(mode="json"),
    }
    (path.parent / f"{path.stem}.json").write_text(json.dumps(meta, indent=2))
    return arr
