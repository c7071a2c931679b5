"""Decode, validate, normalise and re-encode ONE image: everything ingest does to a file's bytes, in one pass.

A web crawl holds JPEG (EXIF orientation), PNG (palette, 16-bit, alpha), WebP, GIF (first frame), BMP and TIFF, plus
files that are empty, truncated, corrupt, mislabelled or not images at all. `decode_image` never raises on bad input:
it returns a `Skip` with a reason from `SKIP_REASONS`. SVG is skipped (reason `svg`): rasterising vector art needs
cairo, which is not a dependency, and web crawls that matter for training store rasters.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import PurePath

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Every reason a file can be skipped for, in the order ingest_report.json lists them.
SKIP_REASONS = (
    "empty",  # zero bytes
    "not_an_image",  # no image format recognised
    "svg",  # vector image; not rasterised (see module docstring)
    "unsupported_format",  # an image format outside the web-crawl set below
    "extension_mismatch",  # e.g. a PNG named .jpg (ingest.on_extension_mismatch = skip)
    "decompression_bomb",  # more pixels than ingest.max_pixels
    "truncated",
    "corrupt",
    "too_small",  # shorter side below ingest.min_side
)

# PIL format -> file extensions that honestly name it. MPO is the multi-picture JPEG some cameras write.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": ("jpg", "jpeg", "jpe", "jfif"),
    "MPO": ("jpg", "jpeg", "mpo"),
    "PNG": ("png",),
    "WEBP": ("webp",),
    "GIF": ("gif",),
    "BMP": ("bmp", "dib"),
    "TIFF": ("tif", "tiff"),
}
IMAGE_EXTENSIONS = frozenset(e for exts in FORMAT_EXTENSIONS.values() for e in exts) | {"svg", "svgz"}
LOSSY_FORMATS = frozenset({"JPEG", "MPO"})


@dataclass(frozen=True)
class DecodeSettings:
    max_side: int
    min_side: int
    max_pixels: int
    background: tuple[int, int, int]
    jpeg_quality: int
    store_format: str  # auto | jpg | png
    skip_extension_mismatch: bool


@dataclass
class Decoded:
    data: bytes  # the re-encoded image, ready for a shard
    format: str  # stored format: jpg | png
    orig_format: str  # PIL format name of the input
    orig_width: int  # after EXIF orientation
    orig_height: int
    width: int  # as stored
    height: int
    sha256: str  # of the input bytes (exact-duplicate key)
    phash: int  # 64-bit perceptual hash of the stored pixels, as a signed int64


@dataclass
class Skip:
    reason: str
    detail: str = ""


def decode_image(data: bytes, name: str, s: DecodeSettings) -> Decoded | Skip:
    """Turn a file's bytes into a stored RGB image (or a reason to skip it). `name` only supplies the extension."""
    if not data:
        return Skip("empty")
    ext = PurePath(name).suffix.lower().lstrip(".")
    Image.MAX_IMAGE_PIXELS = s.max_pixels  # PIL's own guard also covers frames and chunks we never size-check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "?"
            if fmt not in FORMAT_EXTENSIONS:
                return Skip("unsupported_format", fmt)
            if s.skip_extension_mismatch and ext and ext not in FORMAT_EXTENSIONS[fmt]:
                return Skip("extension_mismatch", f"{fmt} content named .{ext}")
            if im.width * im.height > s.max_pixels:
                return Skip("decompression_bomb", f"{im.width}x{im.height}")
            # The full-resolution size as displayed (EXIF orientation), read before draft mode shrinks the decode.
            swap = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            orig_w, orig_h = (im.height, im.width) if swap else im.size
            if fmt in LOSSY_FORMATS:
                # JPEG can decode at 1/2, 1/4, 1/8 scale: far cheaper than decoding full size and downscaling.
                im.draft("RGB", (s.max_side, s.max_side))
            im.load()  # the first frame for GIF / animated WebP
            im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Skip("decompression_bomb", str(e)[:200])
    except UnidentifiedImageError:
        head = data[:512].lstrip().lower()
        if ext in ("svg", "svgz") or b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in data[:4096].lower()):
            return Skip("svg")
        return Skip("not_an_image")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on damaged data
        msg = f"{type(e).__name__}: {e}"[:200]
        return Skip("truncated" if "truncat" in msg.lower() or isinstance(e, EOFError) else "corrupt", msg)
    if min(orig_w, orig_h) < s.min_side:
        return Skip("too_small", f"{orig_w}x{orig_h}")
    try:
        # Downscale before compositing: PIL resizes RGBA with premultiplied alpha, and compositing fewer pixels is
        # what makes enormous clip-art affordable.
        rgb = to_rgb(bound_side(im, s.max_side), s.background)
    except Exception as e:  # a decodable header with undecodable pixels (rare modes)
        return Skip("corrupt", f"{type(e).__name__}: {e}"[:200])
    out_fmt = s.store_format if s.store_format != "auto" else ("jpg" if fmt in LOSSY_FORMATS else "png")
    buf = io.BytesIO()
    if out_fmt == "jpg":
        rgb.save(buf, "JPEG", quality=s.jpeg_quality)
    else:
        rgb.save(buf, "PNG", compress_level=1)  # level 1: most of the size gain at a fraction of the time
    return Decoded(
        data=buf.getvalue(),
        format=out_fmt,
        orig_format=fmt,
        orig_width=orig_w,
        orig_height=orig_h,
        width=rgb.width,
        height=rgb.height,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=phash64(rgb),
    )


def to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited onto `background`, 16/32-bit values are rescaled."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL's convert("L") clips 16-bit values at 255 instead of rescaling; 16-bit PNGs decode to I or I;16.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
        im = Image.fromarray((np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def bound_side(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most `max_side`, keeping the aspect ratio."""
    if max(im.size) <= max_side:
        return im
    if im.mode not in ("RGB", "RGBA", "L", "LA"):  # palette / 16-bit / CMYK: resample in a plain 8-bit mode
        im = (
            to_rgb(im, (0, 0, 0))
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
            else im.convert("RGBA" if im.mode in ("P", "PA") else "RGB")
        )
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    # reducing_gap: box-reduce by an integer factor first, then a bicubic filter: close to a full LANCZOS, far cheaper.
    return im.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def phash64(im: Image.Image) -> int:
    """imagehash's 64-bit DCT pHash as a signed int64 (parquet- and faiss-friendly).

    imagehash resizes the whole image to 32x32 with a plain LANCZOS; doing that resize here with a reducing gap
    (box-reduce first) gives the same hash up to rounding at a fraction of the cost on large images.
    """
    small = im.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
    bits = imagehash.phash(small).hash.flatten()
    return int(np.packbits(bits).view(">i8")[0])


def phash_bytes(values: np.ndarray) -> np.ndarray:
    """int64 pHashes -> [n, 8] uint8 rows in the bit order faiss binary indexes expect."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).astype(">i8").view(np.uint8).reshape(-1, 8))
