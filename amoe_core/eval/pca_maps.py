"""PCA feature maps: the first three principal components of patch features shown as RGB (the view RADIO and AMoE
users look at first). One PCA per feature source, fitted on the patches of all sample images together, so colours
mean the same thing across the images of a column; teachers and student side by side in one PNG grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path

CELL = 96  # pixels per grid cell
PAD = 4
HEADER = 16  # room for the column titles


def pca_components(x: np.ndarray, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], components [n, D]) of the rows of x, sign-fixed (largest-magnitude loading positive, like
    scikit-learn's svd_flip) so the colours do not flip between runs."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise AmoeError(f"PCA maps: need a 2-D array of at least two patch features, got shape {x.shape}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:n]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    if len(comps) < n:  # fewer dimensions than colours: the missing channels stay constant
        comps = np.concatenate([comps, np.zeros((n - len(comps), x.shape[1]))])
    return mean, comps


def pca_rgb(patches: Sequence[np.ndarray], grids: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Per image, an [h, w, 3] float map in [0, 1]: projections on the first three PCs of all images' patches,
    each channel scaled by its 1st-99th percentile range over all images (robust to a few extreme tokens)."""
    if len(patches) != len(grids):
        raise AmoeError(f"PCA maps: {len(patches)} patch sets but {len(grids)} grids")
    for p, (h, w) in zip(patches, grids):
        if len(p) != h * w:
            raise AmoeError(f"PCA maps: {len(p)} patch tokens do not fill a {h}x{w} grid")
    allp = np.concatenate([np.asarray(p, dtype=np.float64) for p in patches])
    mean, comps = pca_components(allp)
    proj = (allp - mean) @ comps.T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    out, start = [], 0
    for h, w in grids:
        out.append(rgb[start : start + h * w].reshape(h, w, 3))
        start += h * w
    return out


def cell_origin(row: int, col: int) -> tuple[int, int]:
    """Top-left (x, y) pixel of grid cell (row, col); column 0 holds the input images."""
    return PAD + col * (CELL + PAD), HEADER + PAD + row * (CELL + PAD)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save_pca_grid(
    images: Sequence[np.ndarray],
    columns: dict[str, tuple[Sequence[np.ndarray], Sequence[tuple[int, int]]]],
    path: str | Path,
) -> Path:
    """Write a PNG grid: one row per image ([H, W, 3] float in [0, 1]), first column the image, then one column per
    feature source `name -> (patches per image [h*w, D], grids per image (h, w))`. Nearest upsampling keeps the
    patch boundaries visible. Returns the path (written atomically)."""
    if not images:
        raise AmoeError("PCA maps: no sample images (evaluate.pca_images must be >= 1 and the dataset non-empty)")
    names = list(columns)
    width = PAD + (1 + len(names)) * (CELL + PAD)
    height = HEADER + PAD + len(images) * (CELL + PAD)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(["image", *names]):
        x, _ = cell_origin(0, c)
        draw.text((x, 2), title[: CELL // 6], fill=(0, 0, 0))
    for r, img in enumerate(images):
        canvas.paste(Image.fromarray(_to_uint8(img)).resize((CELL, CELL), Image.BICUBIC), cell_origin(r, 0))
    for c, name in enumerate(names, start=1):
        patches, grids = columns[name]
        if len(patches) != len(images):
            raise AmoeError(f"PCA maps: column {name!r} has {len(patches)} images, expected {len(images)}")
        for r, rgb in enumerate(pca_rgb(patches, grids)):
            canvas.paste(Image.fromarray(_to_uint8(rgb)).resize((CELL, CELL), Image.NEAREST), cell_origin(r, c))
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return path
