"""`amoe teachers demo` on a tiny generated labelled folder: trained features beat random ones, the saved directory
loads as a teacher, unchanged inputs skip, and the kNN used in report.json matches a brute-force reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from amoe_core.config import TeacherSpec, load_params
from amoe_core.errors import AmoeError
from amoe_core.eval.text_tower import load_text_tower
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.train.demo_teachers import classifier, stage
from amoe_core.train.demo_teachers.folders import list_folder

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230)}


def make_split(root, n_per_class: int, seed: int, size: int = 32) -> None:
    """Class = colour of a small square at a random place; the random background colour dominates the pixels, so
    random-weight features cluster by background (near chance) while a trained classifier finds the square."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.ones((size, size, 3)) * rng.integers(0, 256, 3) + rng.normal(0, 25, (size, size, 3))
            s = rng.integers(10, 15)
            y, x = rng.integers(0, size - s, 2)
            img[y : y + s, x : x + s] = colour
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i:04d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    make_split(root / "train", 80, seed=0)
    make_split(root / "test", 30, seed=1)
    return root


def params_for(folders, out, **extra):
    ov = [f"demo_teachers.out={out}", "demo_teachers.knn_k=10"]
    for kind in ("dinov3", "siglip2"):
        ov += [
            f"demo_teachers.{kind}.train={folders / 'train'}",
            f"demo_teachers.{kind}.test={folders / 'test'}",
            f"demo_teachers.{kind}.hidden_size=32",
            f"demo_teachers.{kind}.layers=2",
            f"demo_teachers.{kind}.heads=2",
            f"demo_teachers.{kind}.image_size=32",
            f"demo_teachers.{kind}.batch_size=32",
            f"demo_teachers.{kind}.lr=0.003",
            f"demo_teachers.{kind}.min_crop_scale=0.6",
        ]
    ov += ["demo_teachers.siglip2.epochs=8", "demo_teachers.dinov3.epochs=1"]
    # the text tower: captions = the class folder names (colour words), a small model, few steps
    ov += [
        "demo_teachers.text.captions=[]",
        f"demo_teachers.text.titled_folders=[{folders / 'train'}]",
        "demo_teachers.text.class_folders=[]",
        "demo_teachers.text.width=32",
        "demo_teachers.text.steps=300",
        "demo_teachers.text.batch_size=32",
        "demo_teachers.text.vocab_size=80",
        "demo_teachers.text.lr=0.01",
        "demo_teachers.segmentation=null",
    ]
    ov += [f"{k}={v}" for k, v in extra.items()]
    return load_params(None, ov)


def test_demo_trains_saves_reports_and_skips(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "teachers"
    threads = torch.get_num_threads()
    report = stage.run(params_for(folders, out))
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    sig = report["siglip2"]
    assert sig["model"] == "Siglip2Model" and sig["classes"] == 3 and sig["train_images"] == 240
    # zero-shot through the LiT text tower on held-out images: far above the random-weight towers and chance
    # (measured: 0.76 trained vs 0.32 random; the kNN of the same image tower is 0.64)
    zs = sig["zero_shot"]["own"]
    assert zs["chance"] == pytest.approx(1 / 3) and zs["trained"] > max(zs["random"], zs["chance"]) + 0.2, zs
    assert sig["text_tower"]["captioned_images"] == 240 and "zero_shot" not in report["dinov3"]
    # the trained SigLIP2 expert clearly beats the same architecture with random weights on its own domain
    assert sig["knn"]["trained"] > sig["knn"]["random"] + 0.15, sig["knn"]
    assert report["dinov3"]["model"] == "DINOv3ViTModel" and 0 <= report["dinov3"]["knn"]["trained"] <= 1
    # here both teachers share one domain, so the "other domain" evaluation must reproduce the own-domain numbers
    for entry in report.values():
        other = entry["knn_other_domain"]
        assert (other["trained"], other["random"]) == (entry["knn"]["trained"], entry["knn"]["random"])
    assert torch.get_num_threads() == threads  # demo_teachers.threads applies only while the stage runs

    # the saved backbones load as teachers (no classifier head), with sizes read from the checkpoint
    dino = load_teacher(TeacherSpec(name="d", kind="dinov3", path=str(out / "dinov3")))
    siglip = load_teacher(TeacherSpec(name="s", kind="siglip2", path=str(out / "siglip2")))
    assert (dino.dim, dino.num_registers, siglip.dim, siglip.num_registers) == (32, 4, 32, 0)
    assert json.loads((out / "siglip2" / "preprocessor_config.json").read_text())["image_mean"] == [0.5] * 3
    tower = load_text_tower(TeacherSpec(name="s", kind="siglip2", path=str(out / "siglip2")))  # offline, from disk
    assert tower.encode(["red", "a picture of blue"]).shape == (2, 32)
    assert not list(out.glob(".*tmp-*")) and not list(out.glob(".*old-*"))  # no leftovers of the atomic swap

    # unchanged inputs: nothing is retrained; a changed knob retrains that teacher only
    def boom(kind, *a, **k):
        raise RuntimeError(f"retrained {kind}")

    monkeypatch.setattr(stage, "train_classifier", boom)
    assert stage.run(params_for(folders, out)) == report
    with pytest.raises(RuntimeError, match="retrained siglip2"):
        stage.run(params_for(folders, out, **{"demo_teachers.siglip2.lr": 0.002}))
    assert load_teacher(TeacherSpec(name="s", kind="siglip2", path=str(out / "siglip2"))).dim == 32  # kept intact


def test_stratified_subset_keeps_class_proportions():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    idx = stage.stratified_subset(labels, 100, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [60, 30, 10]
    assert torch.equal(idx, stage.stratified_subset(labels, 100, seed=0))  # deterministic


def test_bad_folders(tmp_path, folders):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(AmoeError, match="move them into one subfolder per class"):
        list_folder(tmp_path / "flat")
    (tmp_path / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cat" / "a.png")
    with pytest.raises(AmoeError, match="at least 2 classes, one subfolder per class, found 1"):
        list_folder(tmp_path / "one")
    p = params_for(folders, tmp_path / "t", **{"demo_teachers.dinov3.train": str(tmp_path / "missing")})
    with pytest.raises(AmoeError, match="demo_teachers.dinov3.train"):
        stage.run(p)


def test_cosine_head_is_scaled_cosine_similarity():
    head = classifier.CosineHead(8, 3, scale=16.0)
    x = torch.randn(5, 8)
    ref = 16.0 * torch.nn.functional.cosine_similarity(x[:, None], head.weight[None], dim=-1)
    assert torch.allclose(head(x), ref, atol=1e-5)
    assert torch.allclose(head(7.5 * x), head(x), atol=1e-5)  # only the angle of a feature matters


def test_majority_class_miou_by_hand():
    train = [torch.tensor([[0, 0], [1, 255]])]  # class 0 is the most common labelled class (255 ignored)
    test = [torch.tensor([[0, 1], [1, 1]])]
    # all-0 prediction: IoU(0) = 1 / (4 predicted + 1 labelled - 1) = 0.25, IoU(1) = 0 / 3 = 0; both present
    assert stage.majority_miou(train, test, 2) == pytest.approx(0.125)
