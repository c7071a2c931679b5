"""The demo segmentation split (`amoe data demo-pool`): real cut-outs with alpha composited onto real backgrounds,
masks from the alpha channel, in the Pascal VOC layout that `evaluate` reads as `voc:DIR` (eval/segmentation.py).

- Cut-outs: Tux Paint stamps (photos and drawings with alpha) and Openclipart PNGs with transparency, of four
  categories both packages have: animals, food, plants, vehicles (Openclipart's "transportation"). Class = the
  cut-out's category (1..4), 0 = background. Each cut-out is cropped to its alpha's bounding box, scaled so that its
  longer side is 35-70% of the canvas, maybe mirrored, and placed at random; later cut-outs cover earlier ones.
- Backgrounds: Openclipart's opaque tiling patterns (`special/patterns`: bricks, parquet, hatches, ...), tiled over
  the canvas at a random offset: real pictures from the package, textured (not a flat colour a probe would find
  trivially), and holding no object of any class.
- Masks: alpha >= SOLID -> the cut-out's class, alpha <= CLEAR -> what was below, in between (the anti-aliased edge
  and soft shadows) -> 255, ignored by the probe and the metric.
- Train and val use disjoint cut-out files (symlinked Openclipart copies count as one) and disjoint patterns.

Layout (demo_pool.out/segmentation): JPEGImages/<id>.jpg, SegmentationClass/<id>.png (VOC palette),
ImageSets/Segmentation/{train,val}.txt, classes.txt (one name per class index).
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SEG_DIR = "segmentation"
CLASSES = ("background", "animals", "food", "plants", "vehicles")
# class -> (Tux Paint stamp category, Openclipart category)
SOURCES = {1: ("animals", "animals"), 2: ("food", "food"), 3: ("plants", "plants"), 4: ("vehicles", "transportation")}
PATTERNS = Path("special") / "patterns"  # under the Openclipart png root
SOLID, CLEAR = 230, 25  # alpha thresholds (of 255): object, background; between them the edge is ignored
IGNORE = 255
MAX_CUTOUT_PIXELS = 4_000_000  # larger clip-art takes seconds to decode; plenty of smaller pictures remain
SCALE = (0.35, 0.7)  # a cut-out's longer side, as a fraction of the canvas side
CUTOUTS_PER_IMAGE = (1, 3)
VAL_FRACTION = 0.3  # of each class's cut-out files


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (bit-interleaved class index), 255 = (224, 224, 192) as VOC's ignore border."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    pal[3 * IGNORE : 3 * IGNORE + 3] = [224, 224, 192]
    return pal


def has_alpha(path: Path) -> bool:
    """Header only: a readable PNG with transparency and at most MAX_CUTOUT_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
                return alpha and im.width * im.height <= MAX_CUTOUT_PIXELS
    except Exception:  # not an image, or a decompression bomb
        return False


def find_cutouts(stamps: Path, clipart: Path) -> dict[int, list[Path]]:
    """Class -> its cut-out files (real paths, sorted, each once), from both packages."""
    out: dict[int, list[Path]] = {}
    for cls, (tux, oc) in SOURCES.items():
        found = {p.resolve() for root in (stamps / tux, clipart / oc) for p in root.rglob("*.png") if p.is_file()}
        out[cls] = sorted(p for p in found if has_alpha(p))
    return out


def split_files(files: list[Path], rng: random.Random) -> tuple[list[Path], list[Path]]:
    """Disjoint (train, val) parts of `files`, val = VAL_FRACTION of them (at least one each)."""
    files = list(files)
    rng.shuffle(files)
    n_val = min(len(files) - 1, max(1, round(VAL_FRACTION * len(files))))
    return files[n_val:], files[:n_val]


def load_cutout(path: Path, max_side: int) -> Image.Image:
    """RGBA cropped to the alpha's bounding box, reduced to at most `max_side` (premultiplied resampling: PIL)."""
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    box = rgba.getchannel("A").point(lambda a: 255 if a > CLEAR else 0).getbbox()
    if box:
        rgba = rgba.crop(box)
    rgba.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgba


def tiled(pattern: Image.Image, side: int, rng: random.Random) -> Image.Image:
    """The pattern repeated over a side x side canvas from a random offset."""
    tile = pattern.convert("RGB")
    w, h = tile.size
    canvas = Image.new("RGB", (side + w, side + h))
    for y in range(0, side + h, h):
        for x in range(0, side + w, w):
            canvas.paste(tile, (x, y))
    dx, dy = rng.randrange(w), rng.randrange(h)
    return canvas.crop((dx, dy, dx + side, dy + side))


def composite(
    background: Image.Image, layers: list[tuple[Image.Image, int, tuple[int, int]]]
) -> tuple[Image.Image, np.ndarray]:
    """Paste RGBA cut-outs (class, top-left corner) in order; the mask follows each cut-out's alpha."""
    image = background.convert("RGB").copy()
    mask = np.zeros((image.height, image.width), np.uint8)
    for rgba, cls, (x, y) in layers:
        image.paste(rgba, (x, y), rgba)
        a = np.asarray(rgba.getchannel("A"))
        region = mask[y : y + a.shape[0], x : x + a.shape[1]]  # a view: cut-outs lie inside the canvas
        region[a >= SOLID] = cls
        region[(a > CLEAR) & (a < SOLID)] = IGNORE
    return image, mask


def scene(
    cutouts: dict[int, list[Path]], patterns: list[Path], side: int, rng: random.Random
) -> tuple[Image.Image, np.ndarray]:
    """One composite: a tiled pattern and 1-3 cut-outs of random classes, sizes, positions and mirroring."""
    with Image.open(rng.choice(patterns)) as p:
        background = tiled(p, side, rng)
    layers = []
    for _ in range(rng.randint(*CUTOUTS_PER_IMAGE)):
        cls = rng.choice(sorted(cutouts))
        rgba = load_cutout(rng.choice(cutouts[cls]), max(1, round(rng.uniform(*SCALE) * side)))
        if rng.random() < 0.5:
            rgba = rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x, y = rng.randrange(side - rgba.width + 1), rng.randrange(side - rgba.height + 1)
        layers.append((rgba, cls, (x, y)))
    return composite(background, layers)


def build_segmentation(stamps: Path, clipart: Path, out: Path, n_train: int, n_val: int, side: int, seed: int) -> dict:
    """Write the VOC-layout split into `out`; returns its summary (counts per split, classes, cut-out files)."""
    rng = random.Random(seed)
    cutouts = find_cutouts(stamps, clipart)
    empty = [CLASSES[c] for c, files in cutouts.items() if len(files) < 2]
    if empty:
        raise ValueError(f"demo segmentation: fewer than 2 cut-outs with alpha for {empty}")
    patterns = sorted(p.resolve() for p in (clipart / PATTERNS).glob("*.png") if not has_alpha(p))
    parts = {c: split_files(files, rng) for c, files in cutouts.items()}
    bg_train, bg_val = split_files(patterns, rng)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / d).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    summary: dict[str, Any] = {"classes": list(CLASSES), "side": side}
    for split, n, k, bgs in (("train", n_train, 0, bg_train), ("val", n_val, 1, bg_val)):
        ids = []
        for i in range(n):
            image, mask = scene({c: p[k] for c, p in parts.items()}, bgs, side, rng)
            name = f"{split}_{i:05d}"
            image.save(out / "JPEGImages" / f"{name}.jpg", quality=92)
            m = Image.fromarray(mask, mode="L").convert("P")
            m.putpalette(palette)
            m.save(out / "SegmentationClass" / f"{name}.png")
            ids.append(name)
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        summary[split] = {
            "images": n,
            "cutout_files": {CLASSES[c]: len(p[k]) for c, p in parts.items()},
            "backgrounds": len(bgs),
        }
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return summary
