"""PCA feature maps: components agree with scikit-learn, structure shows up as colour, the PNG grid holds the maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amoe_core.errors import AmoeError
from amoe_core.eval.pca_maps import CELL, cell_origin, pca_components, pca_rgb, save_pca_grid


def test_components_match_sklearn_up_to_sign() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10)) * np.arange(10, 0, -1)  # distinct variances -> well-defined components
    mean, comps = pca_components(x)
    ref = PCA(n_components=3).fit(x)
    np.testing.assert_allclose(mean, ref.mean_, atol=1e-10)
    np.testing.assert_allclose(np.abs(comps), np.abs(ref.components_), atol=1e-8)
    # Sign convention: the largest-magnitude loading of each component is positive.
    assert all(c[np.abs(c).argmax()] > 0 for c in comps)


def _two_region_features(
    rng: np.random.Generator, h: int, w: int, direction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Patch features whose main variation is 'left half vs right half' of the image (along `direction`)."""
    mask = (np.arange(w)[None, :] < w // 2).repeat(h, axis=0).reshape(-1)
    feats = np.where(mask[:, None], direction, -direction) * 5 + rng.normal(size=(h * w, len(direction)))
    return feats, mask


def test_first_component_separates_the_dominant_structure() -> None:
    rng = np.random.default_rng(1)
    direction = rng.normal(size=32)
    sets = [_two_region_features(rng, 4, 6, direction) for _ in range(3)]
    maps = pca_rgb([f for f, _ in sets], [(4, 6)] * 3)
    # The direction's sign decides which half is red; it must be the same half in every image (one shared PCA).
    first_red = maps[0][..., 0].reshape(-1)
    left_is_red = first_red[sets[0][1]].mean() > first_red[~sets[0][1]].mean()
    for (_, mask), rgb in zip(sets, maps):
        assert rgb.shape == (4, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
        red = rgb[..., 0].reshape(-1)
        hot, cold = (mask, ~mask) if left_is_red else (~mask, mask)
        assert red[hot].min() > red[cold].max() + 0.3


def test_grid_png_holds_each_sources_map(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    h = w = 4
    images = [rng.uniform(size=(64, 64, 3)) for _ in range(2)]
    cols = {name: ([rng.normal(size=(h * w, 16)) for _ in images], [(h, w)] * 2) for name in ("teacher:a", "student:a")}
    out = save_pca_grid(images, cols, tmp_path / "pca_maps.png")
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (cell_origin(2, 0)[1], cell_origin(0, 3)[0], 3)
    for c, name in enumerate(cols, start=1):
        expected = pca_rgb(*cols[name])
        for r in range(2):
            x0, y0 = cell_origin(r, c)
            cell = png[y0 : y0 + CELL, x0 : x0 + CELL]
            step = CELL // h
            # Nearest upsampling: the centre pixel of each patch block is that patch's colour.
            sampled = cell[step // 2 :: step, step // 2 :: step]
            np.testing.assert_allclose(sampled / 255.0, expected[r], atol=1 / 255 + 1e-9)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary behind


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(AmoeError, match="do not fill a 3x3 grid"):
        pca_rgb([np.ones((8, 4))], [(3, 3)])
    with pytest.raises(AmoeError, match="no sample images"):
        save_pca_grid([], {}, "x.png")
