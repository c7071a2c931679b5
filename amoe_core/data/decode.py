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
    "too_large",  # file above ingest.max_bytes: not read
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
    max_bytes: int = 256 * 2**20  # files are read whole into memory: larger ones are skipped unread


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
            ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of the decoded pixels
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
        # Grey stays one channel through the resize and the hash; it becomes RGB only for storage.
        small = bound_side(to_rgb_or_l(im, s.background), s.max_side)
    except Exception as e:  # a decodable header with undecodable pixels (rare modes)
        return Skip("corrupt", f"{type(e).__name__}: {e}"[:200])
    phash = phash64(small)
    rgb = small.convert("RGB")
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
        phash=phash,
    )


_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited onto `background`, 16/32-bit values are rescaled."""
    return to_rgb_or_l(im, background).convert("RGB")


def to_rgb_or_l(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, or L for greyscale content on a grey background (3x less to resize and hash).

    Compositing happens at full resolution, before any resize: it is linear, so the result equals (up to rounding)
    resizing with premultiplied alpha and compositing afterwards, and one paste costs less than PIL's RGBa round trip.
    """
    if im.mode in _HIGH_BIT_MODES:
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
            a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255.0
        else:  # PIL's convert("L") clips 16-bit values at 255 instead of rescaling; 16-bit PNGs decode to I or I;16
            a = a / (65535.0 if a.max(initial=0) > 255 else 255.0) * 255.0
        im = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        return _composite_palette(im, background)
    grey_bg = background[0] == background[1] == background[2]
    if im.mode in _ALPHA_MODES:
        if im.mode in ("PA", "RGBa", "La"):
            im = im.convert("RGBA" if im.mode != "La" else "LA")
        if im.mode == "LA" and grey_bg:
            canvas = Image.new("L", im.size, background[0])
        else:
            canvas = Image.new("RGB", im.size, background)
        canvas.paste(im, (0, 0), im)  # the image's alpha band is the mask: out = a*im + (1-a)*background
        return canvas
    if im.mode in ("L", "RGB"):
        return im
    return im.convert("L" if im.mode == "1" else "RGB")


def _composite_palette(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Palette + transparency (most clip-art PNGs): composite the 256 palette entries, not the pixels.

    PIL's own RGBA conversion of a one-row image of every index gives each entry's colour and alpha; blending those
    with the background and converting the pixels through the blended palette equals a per-pixel composite exactly.
    """
    lut = Image.frombytes("P", (256, 1), bytes(range(256)))
    lut.putpalette(im.getpalette("RGBA"), "RGBA")
    lut.info["transparency"] = im.info["transparency"]
    rgba = np.asarray(lut.convert("RGBA"), dtype=np.uint32)[0]
    a = rgba[:, 3:]
    # The rounding of PIL's paste/alpha_composite: (x * a + bg * (255 - a)) / 255, rounded half up.
    blended = (rgba[:, :3] * a + np.asarray(background, np.uint32) * (255 - a) + 127) // 255
    out = im.copy()
    out.info.pop("transparency", None)
    out.putpalette(blended.astype(np.uint8).tobytes(), "RGB")
    return out.convert("RGB")


def bound_side(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most `max_side`, keeping the aspect ratio."""
    if max(im.size) <= max_side:
        return im
    if im.mode in _HIGH_BIT_MODES:  # resample in plain 8-bit modes
        im = to_rgb_or_l(im, (0, 0, 0))
    elif im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if im.mode in ("P", "PA") else "RGB")
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    # BOX when shrinking is area averaging (OpenCV's INTER_AREA): every source pixel counts once, little aliasing, ~2/3
    # the cost of an antialiased bilinear and ~2/5 of bicubic on the demo's large clip-art (median side ~800 px).
    # Stored images are training inputs that the loader resizes again, not archival copies.
    return im.resize(size, Image.Resampling.BOX)


# pHash (imagehash.phash, after hackerfactor.com "Looks Like It"): the 8x8 lowest frequencies of the 2-D DCT-II of
# a 32x32 greyscale thumbnail, each bit = coefficient > their median. scipy's unnormalised DCT-II along one axis is
# y[k] = 2 sum_n x[n] cos(pi k (2n + 1) / 2N); only the first 8 rows of that matrix are needed.
_DCT8 = 2.0 * np.cos(np.pi * np.outer(np.arange(8), 2 * np.arange(32) + 1) / 64.0)


def phash64(im: Image.Image) -> int:
    """imagehash's 64-bit DCT pHash as a signed int64 (parquet- and faiss-friendly), without scipy.

    Two 8x32 matrix products replace imagehash's two full scipy DCTs (its per-call overhead was ~0.4 ms, more than
    decoding a small image). Coefficients are rounded to 1e-6 before the median test: symmetric images (clip-art
    icons) have exact-zero coefficients tied with the median, where imagehash's bits are floating-point noise that
    could differ between two copies of the same picture; rounded, such ties are always 0. Elsewhere the bits equal
    imagehash's. The 32x32 thumbnail is resized with a reducing gap (box-reduce first): imagehash's plain LANCZOS
    over the whole image gives the same hash up to rounding at a fraction of the cost.
    """
    grey = im if im.mode == "L" else im.convert("L")
    small = grey.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
    px = np.frombuffer(small.tobytes(), np.uint8).reshape(32, 32).astype(np.float64)  # cheaper than np.asarray(im)
    dct = np.round(_DCT8 @ px @ _DCT8.T, 6).ravel()
    middle = np.sort(dct)[31:33]  # the median of 64 values (np.median costs more than the rest of the hash)
    bits = dct > (middle[0] + middle[1]) / 2
    return int(np.packbits(bits).view(">i8")[0])


def phash_bytes(values: np.ndarray) -> np.ndarray:
    """int64 pHashes -> [n, 8] uint8 rows in the bit order faiss binary indexes expect."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).astype(">i8").view(np.uint8).reshape(-1, 8))
