"""Labelled image folders (`root/<class>/<file>`) for the demo teachers: decoded, letterboxed squares in memory."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from amoe_core.data.labelled_folders import list_labelled_folder
from amoe_core.errors import AmoeError


@dataclass
class LabelledImages:
    images: Tensor  # [N, 3, S, S] uint8, letterboxed onto white
    labels: Tensor  # [N] long
    classes: list[str]


def list_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """`root/<class>/<file>` -> (file, class index) pairs, both sorted, and the class names (at least two: a
    classifier)."""
    files, names = list_labelled_folder(root, "labelled folder")
    classes = sorted(set(names))
    if len(classes) < 2:
        raise AmoeError(f"{root}: expected at least 2 classes, one subfolder per class, found {len(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return [(f, index[n]) for f, n in zip(files, names)], classes


def load_square(path: Path, size: int) -> Tensor:
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
        images = list(pool.map(lambda it: load_square(it[0], size), items))
    return LabelledImages(torch.stack(images), torch.tensor([c for _, c in items]), classes)


def folder_fingerprint(root: Path) -> str:
    """Names and sizes of every file: changes when the split changes, cheap to compute."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            h.update(f"{Path(dirpath, name).relative_to(root)}:{os.path.getsize(Path(dirpath, name))}\n".encode())
    return h.hexdigest()[:16]
