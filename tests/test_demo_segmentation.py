"""The demo segmentation split: real-layout cut-outs with alpha composited onto tiled patterns, masks from alpha.

Fixture packages mimic the two Debian trees (Tux Paint stamps/<category>/..., Openclipart png/<category>/...) with
cut-outs of one flat colour each, so every object pixel of a composite names the cut-out file it came from."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from amoe_core.data import demo_segmentation as ds
from amoe_core.eval.segmentation import IGNORE, load_voc_pair

# 27 colours of {0, 127, 255}^3 minus the patterns' black and white: far apart, so JPEG noise cannot swap them
PALETTE = [c for c in itertools.product((0, 127, 255), repeat=3) if c not in ((0, 0, 0), (255, 255, 255))]


def disc(colour: tuple[int, int, int], side: int = 40) -> Image.Image:
    """A flat-colour disc whose alpha falls from 255 to 0 over 4 px: solid core, anti-aliased edge."""
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2 + 0.5, xx - side / 2 + 0.5)
    alpha = np.clip((side / 2 - r) * 255 / 4, 0, 255).astype(np.uint8)
    rgba = np.dstack([np.broadcast_to(np.array(colour, np.uint8), (side, side, 3)), alpha])
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("debs")
    stamps, clipart = root / "stamps", root / "png"
    colours = iter(PALETTE)
    owner = {}
    for cls, (tux, oc) in ds.SOURCES.items():
        for tree, cat in ((stamps, tux), (clipart, oc)):
            (tree / cat / "sub").mkdir(parents=True)
            for i in range(2):
                c = next(colours)
                path = tree / cat / "sub" / f"{i}.png"
                disc(c).save(path)
                owner[c] = (cls, path.resolve())
    (clipart / ds.PATTERNS).mkdir(parents=True)
    for i in range(4):  # opaque checkerboards, black and white
        board = (np.indices((8 + 2 * i, 8 + 2 * i)).sum(0) % 2 * 255).astype(np.uint8)
        Image.fromarray(board, "L").save(clipart / ds.PATTERNS / f"p{i}.png")
    (clipart / ds.PATTERNS / "with_alpha.png").write_bytes((stamps / "food" / "sub" / "0.png").read_bytes())
    return stamps, clipart, owner


def test_composite_mask_is_the_alpha_derived_class():
    bg = Image.new("RGB", (64, 64), (10, 20, 30))
    a, b = disc((255, 0, 0), 40), disc((0, 0, 255), 30)
    image, mask = ds.composite(bg, [(a, 2, (5, 7)), (b, 4, (30, 30))])
    # expected, computed from the two alphas directly: later cut-outs cover earlier ones, CLEAR alpha keeps what was below
    want = np.zeros((64, 64), np.uint8)
    for rgba, cls, (x, y) in ((a, 2, (5, 7)), (b, 4, (30, 30))):
        al = np.asarray(rgba)[..., 3]
        region = want[y : y + al.shape[0], x : x + al.shape[1]]
        region[al >= ds.SOLID] = cls
        region[(al > ds.CLEAR) & (al < ds.SOLID)] = IGNORE
    np.testing.assert_array_equal(mask, want)
    assert {0, 2, 4, IGNORE} == set(np.unique(mask).tolist())
    px = np.asarray(image)
    # object pixels: the cut-out's colour, blended with at most (255 - SOLID) / 255 of a colour <= 255 away
    for cls, colour in ((4, (0, 0, 255)), (2, (255, 0, 0))):
        assert np.abs(px[mask == cls].astype(int) - colour).max() <= 255 - ds.SOLID
    assert np.abs(px[mask == 0].astype(int) - (10, 20, 30)).max() <= ds.CLEAR  # alpha <= CLEAR: mostly background


def test_builder_writes_a_voc_split_with_disjoint_cutouts(packages, tmp_path):
    stamps, clipart, owner = packages
    out = tmp_path / "seg"
    summary = ds.build_segmentation(stamps, clipart, out, 12, 6, 64, seed=0)
    assert summary["train"]["images"] == 12 and summary["val"]["images"] == 6
    assert (out / "classes.txt").read_text().split() == list(ds.CLASSES)
    train, test = load_voc_pair(f"voc:{out}", f"voc:{out}")  # the evaluation's own reader
    assert (len(train), len(test)) == (12, 6)
    used: dict[str, set] = {"train": set(), "val": set()}
    for split, data in (("train", train), ("val", test)):
        for i in range(len(data)):
            mask = data.mask(i).numpy()
            assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4, IGNORE}
            assert (mask == IGNORE).any() and (mask == 0).any()  # an edge and a background in every composite
            img = (data.image(i, 64) * 255).round().permute(1, 2, 0).numpy()
            # object pixels away from any edge: their colour names the cut-out file, whose category is the label
            core = torch.nn.functional.max_pool2d(
                torch.from_numpy((mask == 0) | (mask == IGNORE)).float()[None], 5, 1, 2
            )
            inner = (core[0].numpy() == 0) & (mask != 0) & (mask != IGNORE)
            for y, x in zip(*np.nonzero(inner)):
                c = PALETTE[int(np.argmin(((np.array(PALETTE) - img[y, x]) ** 2).sum(1)))]
                cls, path = owner[c]
                assert cls == mask[y, x]
                used[split].add(path)
    assert used["train"] and used["val"] and not (used["train"] & used["val"])  # cut-outs of val never in train
    # the pattern with alpha is no background; 4 opaque ones split 3 / 1
    assert (summary["train"]["backgrounds"], summary["val"]["backgrounds"]) == (3, 1)
