"""Resolution policy: aspect-preserving grids within the token range, reproducible per-image budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from amoe_core.config import PackingConfig
from amoe_core.data.resolution import grid_for, patchify, plan_grids, resize_to_grid, token_budget


@settings(max_examples=50, deadline=None)
@given(
    h=st.integers(16, 4000),
    w=st.integers(16, 4000),
    lo=st.integers(1, 64),
    span=st.integers(0, 1000),
    data=st.data(),
)
def test_grid_in_range_and_keeps_aspect(h, w, lo, span, data):
    hi = lo + span
    budget = data.draw(st.integers(lo, hi))
    rows, cols = grid_for(h, w, budget, lo, hi)
    assert lo <= rows * cols <= hi
    if rows * cols > budget:  # only growth to reach min_tokens may exceed the budget, and only by one row/column
        assert (rows - 1) * cols < lo or rows * (cols - 1) < lo
    # without a minimum to reach, the grid keeps the aspect ratio as well as integers allow
    rows, cols = grid_for(h, w, budget, 1, budget)
    if min(rows, cols) >= 4:
        # off by at most one patch per side (relative error)
        err = abs(math.log((rows / cols) / (h / w)))
        assert err <= math.log((rows + 1) / rows) + math.log((cols + 1) / cols) + 1e-9
        # and the grid uses the budget well: one more row or column would not have fitted
        assert (rows + 1) * (cols + 1) > budget


def test_budget_reproducible_per_key_and_epoch_and_loguniform():
    cfg = PackingConfig(min_tokens=4, max_tokens=64, c_max=256, token_sampling="loguniform")
    keys = [f"img{i:05d}" for i in range(4000)]
    b0 = np.array([token_budget(cfg, k, 100, 100, seed=0, epoch=0) for k in keys])
    assert (b0 == [token_budget(cfg, k, 100, 100, seed=0, epoch=0) for k in keys]).all()
    b1 = np.array([token_budget(cfg, k, 100, 100, seed=0, epoch=1) for k in keys])
    assert (b0 != b1).mean() > 0.8  # a new epoch redraws
    assert b0.min() == 4 and b0.max() == 64
    # log-uniform: each octave [4,8), [8,16), [16,32), [32,64] gets ~ log(2) / log(65 / 4) of the mass
    for lo_, hi_ in ((4, 8), (8, 16), (16, 32)):
        expected = math.log(hi_ / lo_) / math.log(65 / 4)
        assert abs(((b0 >= lo_) & (b0 < hi_)).mean() - expected) < 0.03
    uni = PackingConfig(min_tokens=4, max_tokens=64, c_max=256, token_sampling="uniform")
    bu = np.array([token_budget(uni, k, 100, 100, 0, 0) for k in keys])
    assert abs(bu.mean() - 34) < 1.0 and bu.min() == 4 and bu.max() == 64


def test_native_budget_is_the_image_size_clamped():
    cfg = PackingConfig(min_tokens=4, max_tokens=64, c_max=256, token_sampling="native")
    assert token_budget(cfg, "a", 96, 128, 0, 0) == 6 * 8
    assert token_budget(cfg, "a", 28, 28, 0, 0) == 4  # 2 x 2 patches
    assert token_budget(cfg, "a", 512, 512, 0, 0) == 64  # 32 x 32 clamped
    grids = plan_grids(cfg, ["a", "b"], np.array([96, 512]), np.array([128, 256]), 0, 0)
    assert grids.tolist() == [[6, 8], [10, 5]]  # 2:1 within 64 tokens: 10 x 5 (11 x 5 fits but distorts)


def test_resize_and_patchify_match_a_direct_crop_reference():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
    image = resize_to_grid(img, 3, 5, 16)
    assert image.shape == (3, 48, 80) and 0 <= image.min() and image.max() <= 1
    expected = torch.from_numpy(np.array(img.resize((80, 48), Image.Resampling.BICUBIC))).permute(2, 0, 1) / 255
    torch.testing.assert_close(image, expected.float())
    patches, coords = patchify(image, 16)
    assert patches.shape == (15, 16 * 16 * 3) and coords.dtype == torch.long
    for k, (r, c) in enumerate(coords.tolist()):
        assert (r, c) == divmod(k, 5)  # row-major
        ref = image[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].permute(1, 2, 0).reshape(-1)  # (py, px, c)
        assert torch.equal(patches[k], ref)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_inputs_become_three_channels(mode):
    img = Image.new(mode, (20, 40))
    assert resize_to_grid(img, 2, 1, 16).shape == (3, 32, 16)
