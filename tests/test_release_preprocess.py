"""The release's preprocessing (`evaluate.preprocess: release`, always for `--model siglino:`): the same grids as the
released SigLino image processor, images of one size batched together, order kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from amoe_core.config import validate_params
from amoe_core.eval.datasets import load_labelled
from amoe_core.eval.evaluate import image_sizing
from amoe_core.eval.features import Feats, bf16_autocast, extract_summaries, release_size, smart_resize

# (height, width, max_pixels) -> (height, width) printed by tiiuae/amoe siglino/image_processor.py smart_resize
# (factor 16, min_pixels 128², its defaults), run once on that repository's code: 25 aspect ratios at the release's
# two maximum areas (256² for ImageNet, 768² for its other sets)
RELEASE = [
    (200, 300, 65536, 192, 304), (300, 200, 65536, 304, 192), (224, 224, 65536, 224, 224),
    (500, 375, 65536, 288, 208), (375, 500, 65536, 208, 288), (480, 640, 65536, 208, 288),
    (640, 480, 65536, 288, 208), (1080, 1920, 65536, 192, 336), (1920, 1080, 65536, 336, 192),
    (100, 1000, 65536, 80, 800), (1000, 100, 65536, 800, 80), (17, 33, 65536, 96, 192), (33, 17, 65536, 192, 96),
    (128, 129, 65536, 128, 128), (257, 255, 65536, 256, 256), (600, 601, 65536, 240, 256),
    (2000, 3000, 65536, 208, 304), (333, 777, 65536, 160, 384), (777, 333, 65536, 384, 160),
    (64, 64, 65536, 128, 128), (50, 400, 65536, 48, 400), (768, 1024, 65536, 208, 288),
    (1024, 2048, 65536, 176, 352), (37, 4000, 65536, 16, 2656), (4000, 37, 65536, 2656, 16),
    (200, 300, 589824, 192, 304), (300, 200, 589824, 304, 192), (224, 224, 589824, 224, 224),
    (500, 375, 589824, 496, 368), (375, 500, 589824, 368, 496), (480, 640, 589824, 480, 640),
    (640, 480, 589824, 640, 480), (1080, 1920, 589824, 576, 1024), (1920, 1080, 589824, 1024, 576),
    (100, 1000, 589824, 96, 992), (1000, 100, 589824, 992, 96), (17, 33, 589824, 96, 192),
    (33, 17, 589824, 192, 96), (128, 129, 589824, 128, 128), (257, 255, 589824, 256, 256),
    (600, 601, 589824, 608, 608), (2000, 3000, 589824, 624, 928), (333, 777, 589824, 336, 784),
    (777, 333, 589824, 784, 336), (64, 64, 589824, 128, 128), (50, 400, 589824, 48, 400),
    (768, 1024, 589824, 656, 880), (1024, 2048, 589824, 528, 1072), (37, 4000, 589824, 32, 4000),
    (4000, 37, 589824, 4000, 32),
]  # fmt: skip


@pytest.mark.parametrize(("h", "w", "max_pixels", "out_h", "out_w"), RELEASE)
def test_grids_equal_the_released_processor(h, w, max_pixels, out_h, out_w):
    assert smart_resize(h, w, 16, 128 * 128, max_pixels) == (out_h, out_w)
    assert release_size(16, max_pixels)(h, w) == (out_h, out_w)


def test_images_keep_their_aspect_are_batched_by_size_and_keep_their_order(tmp_path):
    sizes = {"a": [(200, 300), (300, 200)], "b": [(224, 224), (200, 300), (90, 500)]}
    rng = np.random.default_rng(0)
    for c, hw in sizes.items():
        (tmp_path / c).mkdir()
        for i, (h, w) in enumerate(hw):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    data = load_labelled(f"folder:{tmp_path}")
    seen: list[tuple[int, ...]] = []

    def shape_and_mean(images: torch.Tensor) -> dict[str, Feats]:
        """Summary = (mean pixel, height) per image: identifies which image landed in which row."""
        seen.append(tuple(images.shape))
        height = torch.full((len(images),), float(images.shape[2]))
        return {"x": Feats(torch.stack([images.mean((1, 2, 3)), height], 1))}

    size = release_size(16, 256 * 256)
    feats = extract_summaries(shape_and_mean, data, 64, batch_size=8, size=size)["x"]
    # a 200x300 image: 12x19 patches, as the release (not 16x16 as a square resize to 256 would give)
    assert sorted(seen) == sorted([(2, 3, 192, 304), (1, 3, 304, 192), (1, 3, 224, 224), (1, 3, 96, 496)])
    for i in range(len(data)):  # row i is image i, whatever batch it ran in
        im = data.image_sized(i, size)
        assert feats[i, 0] == pytest.approx(float(im.mean()), abs=1e-6)  # float32 mean of the same tensor
        assert feats[i, 1] == im.shape[1]
    square = extract_summaries(shape_and_mean, data, 64, batch_size=8)["x"]
    assert (square[:, 1] == 64).all()


def test_sizing_follows_the_params():
    p = validate_params({"evaluate": {"preprocess": "release"}})
    ds = p.evaluate.datasets[0]
    size, tag = image_sizing(p, ds, 64)
    assert tag == "release4096" and size(200, 300) == smart_resize(200, 300, 16, 128 * 128, 64 * 64)
    p = validate_params(
        {"evaluate": {"preprocess": "release", "datasets": [{**ds.model_dump(mode="json"), "max_pixels": 65536}]}}
    )
    assert image_sizing(p, p.evaluate.datasets[0], 64)[1] == "release65536"
    assert image_sizing(validate_params({}), ds, 64) == (None, "")
    f = lambda x: {}  # noqa: E731
    assert bf16_autocast(f, torch.device("cpu"), True) is f  # CPU: unchanged (autocast bf16 is a CUDA switch)
