"""The segmentation linear probe: mIoU against a confusion matrix counted by hand, a planted signal it must find (and
must not find once the masks are shuffled), VOC-layout reading, and the whole `amoe evaluate` path on real teachers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amoe_core.config import validate_params
from amoe_core.errors import AmoeError
from amoe_core.eval import evaluate as ev
from amoe_core.eval.segmentation import (
    confusion,
    extract_patches,
    load_voc,
    load_voc_pair,
    n_classes_of,
    scores,
    segmentation_probe,
)
from amoe_core.tracking.runs import RunDir

X = 255  # ignore


def test_miou_equals_a_hand_counted_confusion_matrix():
    """3 images, 3 classes; class 2 is absent from image 1; ignore pixels are left out of every count."""
    labels = [
        torch.tensor([[0, 0, 1], [1, X, X]]),
        torch.tensor([[2, 2, 0], [0, 1, 1]]),
        torch.tensor([[1, 2, X], [0, 0, 2]]),
    ]
    preds = [
        torch.tensor([[0, 1, 1], [1, 2, 0]]),
        torch.tensor([[2, 0, 0], [0, 1, 2]]),
        torch.tensor([[1, 2, 2], [0, 1, 2]]),
    ]
    conf = sum(confusion(p, y, 3) for p, y in zip(preds, labels))
    # by hand, (label, pred) pairs over the 15 labelled pixels:
    # img1: (0,0) (0,1) (1,1) (1,1)                       img2: (2,2) (2,0) (0,0) (0,0) (1,1) (1,2)
    # img3: (1,1) (2,2) (0,0) (0,1) (2,2)
    expected = torch.tensor([[4, 2, 0], [0, 4, 1], [1, 0, 3]])
    assert torch.equal(conf, expected)
    # IoU: class 0: 4 / (6 + 5 - 4) = 4/7; class 1: 4 / (5 + 6 - 4) = 4/7; class 2: 3 / (4 + 4 - 3) = 3/5
    m = scores(conf)
    assert m["miou"] == pytest.approx((4 / 7 + 4 / 7 + 3 / 5) / 3, abs=1e-12)  # float64 of small integer ratios
    assert m["pixel_acc"] == pytest.approx(11 / 15, abs=1e-12)
    # a class never labelled nor predicted does not count (averaged over classes present)
    assert scores(torch.nn.functional.pad(conf, (0, 1, 0, 1)))["miou"] == pytest.approx(m["miou"], abs=1e-12)


COLOURS = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 220], [240, 230, 40]], dtype=np.uint8)
BLOCK, RES = 16, 64


def _voc(root: Path, n_train: int, n_test: int, seed: int = 0, grey: bool = False) -> Path:
    """Images of 16 px colour blocks (with pixel noise) and masks whose class is the block's colour."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"im{i:03d}" for i in range(n_train + n_test)]
    for i in ids:
        cls = rng.integers(0, len(COLOURS), (RES // BLOCK, RES // BLOCK))
        mask = np.kron(cls, np.ones((BLOCK, BLOCK), dtype=np.int64)).astype(np.uint8)
        img = COLOURS[mask].astype(np.int16) + rng.integers(-20, 21, (RES, RES, 3))
        mask[:2] = X  # an ignored border row, as VOC's object outlines
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{i}.png")
        m = Image.fromarray(mask, mode="L")
        if not grey:
            m = m.convert("P")
            m.putpalette([v for c in COLOURS for v in c.tolist()] + [0] * (3 * 252))
        m.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def _mean_colour(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features that carry colour: each 8 px patch's mean RGB, [B, g, g, 3] (half a block: bilinear upsampling blurs
    only the outer half-patch of a block; with one patch per block, corners where 3-4 classes meet cap mIoU ~0.92)."""
    pooled = torch.nn.functional.avg_pool2d(images, BLOCK // 2)
    return {"colour": pooled.permute(0, 2, 3, 1)}


def test_planted_colour_signal_is_found_and_shuffled_masks_give_chance(tmp_path):
    train, test = load_voc_pair(f"voc:{_voc(tmp_path, 40, 20)}", f"voc:{tmp_path}")
    assert len(train) == 40 and len(test) == 20
    ftr = extract_patches(_mean_colour, train, RES, 16)["colour"]
    fte = extract_patches(_mean_colour, test, RES, 16)["colour"]
    assert ftr.shape == (40, 8, 8, 3)
    mtr = [train.mask(i) for i in range(len(train))]
    mte = [test.mask(i) for i in range(len(test))]
    assert n_classes_of(mtr) == 4 and mtr[0].shape == (RES, RES) and int(mtr[0][0, 0]) == X
    cpu = torch.device("cpu")
    found = segmentation_probe(ftr, mtr, fte, mte, 4, epochs=30, lr=0.05, seed=0, device=cpu)
    assert found["miou"] >= 0.9 and found["pixel_acc"] >= 0.9
    shuffled = [mtr[i] for i in np.random.default_rng(1).permutation(len(mtr))]
    chance = segmentation_probe(ftr, shuffled, fte, mte, 4, epochs=30, lr=0.05, seed=0, device=cpu)
    # 4 equally likely classes: a guess that ignores the image scores IoU ~1/7 per class (random labels) or ~1/16
    # (one class everywhere); 0.35 leaves a wide margin below any real signal
    assert chance["miou"] < 0.35, chance


def test_voc_layout_errors_and_grey_masks(tmp_path):
    root = _voc(tmp_path / "g", 3, 2, grey=True)
    m = load_voc(f"voc:{root}", "train").mask(0)
    assert set(torch.unique(m).tolist()) <= {0, 1, 2, 3, X}
    with pytest.raises(AmoeError, match="needs JPEGImages/ and SegmentationClass/"):
        load_voc(f"voc:{tmp_path}", "train")
    (root / "ImageSets/Segmentation/val.txt").write_text("nope\n")
    with pytest.raises(AmoeError, match="id 'nope'.*lacks an image or mask"):
        load_voc(f"voc:{root}", "test")
    (root / "ImageSets/Segmentation/train.txt").unlink()
    (root / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(AmoeError, match="shares images with"):
        load_voc_pair(f"voc:{root}", f"voc:{root}")


def test_evaluate_writes_segmentation_for_teachers(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              patch_size=16, num_patches=16)  # fmt: skip
    Siglip2VisionModel(cfg).save_pretrained(tmp_path / "sig")
    voc = _voc(tmp_path / "voc", 12, 6)
    params = validate_params(
        {
            "teachers": [{"name": "sig", "kind": "siglip2", "path": str(tmp_path / "sig")}],
            "distill": {"runs_dir": str(tmp_path / "runs")},
            "evaluate": {
                "datasets": [{"name": "blocks", "train": f"voc:{voc}", "test": f"voc:{voc}", "task": "segmentation"}],
                "resolutions": [RES],
                "main_resolution": RES,
                "seg_epochs": 3,
                "cache": str(tmp_path / "cache"),
            },
        }
    )
    out = RunDir(tmp_path / "runs" / "_teachers")
    out.path.mkdir(parents=True)
    ev.evaluate(params, out, None)
    result = json.loads(out.eval_file.read_text())
    seg = result["segmentation"]["blocks"]["teacher:sig"][f"{RES}px"]
    assert set(seg) == {"miou", "pixel_acc"} and 0 <= seg["miou"] <= seg["pixel_acc"] + 1 and 0 < seg["pixel_acc"] <= 1
    assert len(list((tmp_path / "cache" / "blocks").rglob("*-patches.npy"))) == 2  # train and test, cached
    ev.evaluate(params, out, None)  # from the cache: the same numbers
    assert json.loads(out.eval_file.read_text())["segmentation"] == result["segmentation"]
