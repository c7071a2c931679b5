"""decode_image on every format a crawl holds and on every kind of bad file."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from amoe_core.data.decode import _DCT8, Decoded, DecodeSettings, Skip, decode_image, phash64, to_rgb

S = DecodeSettings(max_side=64, min_side=16, max_pixels=1_000_000, background=(255, 255, 255), jpeg_quality=92,
                   store_format="auto", skip_extension_mismatch=True)  # fmt: skip


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def photo(w=80, h=40) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 3 % 256, y * 5 % 256, (x + y) % 256], -1).astype(np.uint8))


def stored(d: Decoded) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(d.data)))


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"),
                                     ("TIFF", "tif"), ("GIF", "gif")])  # fmt: skip
def test_formats_decode_and_bound(fmt, ext):
    d = decode_image(encode(photo(), fmt), f"a.{ext}", S)
    assert isinstance(d, Decoded), d
    assert (d.orig_width, d.orig_height) == (80, 40) and (d.width, d.height) == (64, 32)
    assert d.format == ("jpg" if fmt == "JPEG" else "png") and stored(d).shape == (32, 64, 3)


def test_exif_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    d = decode_image(encode(photo(60, 30), "JPEG", exif=exif), "r.jpg", S)
    assert (d.orig_width, d.orig_height) == (30, 60) and stored(d).shape == (60, 30, 3)


def test_alpha_palette_and_16bit():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red -> the white background
    assert (stored(decode_image(encode(rgba, "PNG"), "t.png", S)) == 255).all()
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 255] + [0] * 765)
    pal.info["transparency"] = 0
    assert (stored(decode_image(encode(pal, "PNG", transparency=0), "p.png", S)) == 255).all()
    sixteen = Image.fromarray(np.full((20, 20), 32896, np.uint16))  # mid grey in 16 bits, 128 in 8 bits
    px = stored(decode_image(encode(sixteen, "PNG"), "g.png", S))
    assert px.shape == (20, 20, 3) and abs(int(px[0, 0, 0]) - 128) <= 1


def test_gif_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:])
    px = stored(decode_image(b.getvalue(), "anim.gif", S))
    assert px[0, 0, 0] > 200 and px[0, 0, 1] < 50


def bad_files() -> dict[str, tuple[bytes, str]]:
    jpg = encode(photo(), "JPEG")
    png = encode(photo(), "PNG")
    corrupt = bytearray(png)
    corrupt[60:200] = bytes(140)  # the zlib stream of the IDAT chunk
    return {
        "empty": (b"", "e.jpg"),
        "truncated": (jpg[: len(jpg) // 2], "t.jpg"),
        "corrupt": (bytes(corrupt), "c.png"),
        "extension_mismatch": (png, "m.jpg"),
        "not_an_image": (b"hello, I am a text file\n" * 20, "n.png"),
        "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "v.svg"),
        "decompression_bomb": (encode(Image.new("L", (2000, 1000)), "PNG"), "b.png"),
        "too_small": (encode(photo(30, 10), "PNG"), "s.png"),
    }


@pytest.mark.parametrize("reason", list(bad_files()))
def test_bad_files_are_skipped_with_reason(reason):
    data, name = bad_files()[reason]
    r = decode_image(data, name, S)
    assert isinstance(r, Skip) and r.reason == reason, r


def test_extension_mismatch_can_be_decoded():
    data, name = bad_files()["extension_mismatch"]
    assert isinstance(decode_image(data, name, replace(S, skip_extension_mismatch=False)), Decoded)


def test_same_picture_hashes_close_distinct_far():
    big = photo(400, 300)
    a = decode_image(encode(big, "PNG"), "a.png", S)
    b = decode_image(encode(big.resize((200, 150)), "JPEG", quality=70), "b.jpg", S)
    c = decode_image(encode(photo(300, 400).transpose(Image.Transpose.ROTATE_90), "PNG"), "c.png", S)
    ham = lambda x, y: bin((x.phash ^ y.phash) & (2**64 - 1)).count("1")  # noqa: E731
    assert ham(a, b) <= 4 < ham(a, c)


def _composite_reference(im: Image.Image, bg: tuple[int, int, int]) -> np.ndarray:
    """PIL's own per-pixel composite: RGBA conversion + alpha_composite over an opaque canvas."""
    rgba = im.convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", im.size, (*bg, 255)), rgba).convert("RGB"), np.int16)


@pytest.mark.parametrize("bg", [(255, 255, 255), (30, 200, 90)])
def test_composite_matches_pil_alpha_composite(bg):
    rng = np.random.default_rng(0)
    idx = Image.fromarray(rng.integers(0, 200, (40, 50), dtype=np.uint8), "P")
    idx.putpalette(rng.integers(0, 256, 200 * 3, dtype=np.uint8).tobytes())
    idx.info["transparency"] = bytes(rng.integers(0, 256, 200, dtype=np.uint8))  # per-entry alpha (tRNS)
    single = idx.copy()
    single.info["transparency"] = 7  # one fully transparent index
    rgba = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    la = Image.fromarray(rng.integers(0, 256, (40, 50, 2), dtype=np.uint8), "LA")
    for im in (idx, single, rgba, la):
        ours = np.asarray(to_rgb(im, bg), np.int16)
        # Palettes blend 256 entries with PIL's rounding (exact); pixel pastes round within one level.
        assert np.abs(ours - _composite_reference(im, bg)).max() <= (0 if im.mode == "P" else 1), im.mode
    # Through decode_image too (50 px: no resize under max_side 64): a transparent palette PNG is stored composited.
    d = decode_image(encode(idx, "PNG", transparency=idx.info["transparency"]), "p.png", replace(S, background=bg))
    assert (stored(d) == _composite_reference(idx, bg)).all()


def test_phash_equals_imagehash_on_real_images(demo_pool_small):
    """Our matrix DCT against imagehash's scipy DCT on real demo images (skipping exact median ties, see phash64)."""
    import imagehash

    files = sorted((demo_pool_small / "pool").rglob("*.png"))[::3][:60]
    compared = 0
    for f in files:
        im = to_rgb(Image.open(f), (255, 255, 255))
        small = im.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
        dct = np.round(_DCT8 @ np.asarray(small, np.float64) @ _DCT8.T, 6).ravel()
        if np.sort(dct)[31] == np.sort(dct)[32]:  # a tie at the median: imagehash's bit is rounding noise there
            continue
        ref = int(np.packbits(imagehash.phash(small).hash.flatten()).view(">i8")[0])
        assert phash64(im) == ref, f
        compared += 1
    assert compared >= 30
