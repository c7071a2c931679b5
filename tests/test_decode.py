"""decode_image on every format a crawl holds and on every kind of bad file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from amoe_core.data.decode import Decoded, DecodeSettings, Skip, decode_image

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
    from dataclasses import replace

    data, name = bad_files()["extension_mismatch"]
    assert isinstance(decode_image(data, name, replace(S, skip_extension_mismatch=False)), Decoded)


def test_same_picture_hashes_close_distinct_far():
    big = photo(400, 300)
    a = decode_image(encode(big, "PNG"), "a.png", S)
    b = decode_image(encode(big.resize((200, 150)), "JPEG", quality=70), "b.jpg", S)
    c = decode_image(encode(photo(300, 400).transpose(Image.Transpose.ROTATE_90), "PNG"), "c.png", S)
    ham = lambda x, y: bin((x.phash ^ y.phash) & (2**64 - 1)).count("1")  # noqa: E731
    assert ham(a, b) <= 4 < ham(a, c)
