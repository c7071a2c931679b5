"""The demo pool built from the real Debian packages (reduced counts)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from conftest import small_params
from PIL import Image

from amoe_core.config import DemoPoolConfig
from amoe_core.data import demo_pool
from amoe_core.data.demo_pool import FMNIST_CLASSES, balanced_categories, run
from amoe_core.errors import AmoeError


def _files(d):
    return sorted(p for p in d.rglob("*") if p.is_file())


def test_layout_counts_and_labels(demo_pool_small):
    summary = json.loads((demo_pool_small / "summary.json").read_text())
    pool, splits = demo_pool_small / "pool", demo_pool_small / "splits"
    assert sorted(p.name for p in pool.iterdir()) == ["fashion_mnist", "openclipart", "tuxpaint"]
    assert sorted(p.name for p in splits.iterdir()) == ["clipart_test", "clipart_train", "fmnist_test", "fmnist_train"]
    # Counts on disk agree with the summary, per source and per class.
    for src in ("fashion_mnist", "openclipart", "tuxpaint"):
        on_disk = {c.name: len(_files(c)) for c in (pool / src).iterdir()}
        assert on_disk == summary["pool"][src]["classes"]
        assert sum(on_disk.values()) == summary["pool"][src]["total"]
    assert summary["pool"]["fashion_mnist"]["total"] == 200
    assert sorted(p.name for p in (splits / "fmnist_test").iterdir()) == sorted(FMNIST_CLASSES)
    assert len(_files(splits / "fmnist_test")) == 100
    # The fashion-mnist pool image matches its IDX source pixel for pixel, and its folder is its label.
    f = _files(pool / "fashion_mnist")[0]
    a = np.asarray(Image.open(f))
    assert a.shape == (28, 28) and a.dtype == np.uint8 and a.max() > 0


def test_splits_are_disjoint_downscaled_rgb(demo_pool_small):
    splits = demo_pool_small / "splits"
    train = {p.name for p in _files(splits / "clipart_train")}
    test = {p.name for p in _files(splits / "clipart_test")}
    assert train and test and not train & test
    assert not {p.name for p in _files(splits / "fmnist_train")} & {p.name for p in _files(splits / "fmnist_test")}
    for p in _files(splits / "clipart_train")[:30] + _files(splits / "clipart_test")[:30]:
        im = Image.open(p)
        assert im.mode == "RGB" and max(im.size) <= 256
    # Held-out clip-art is not in the unlabelled pool; the clip-art train split is (as raw files).
    pool_names = {p.name for p in _files(demo_pool_small / "pool" / "openclipart")}
    assert not test & pool_names
    assert train <= pool_names


def test_clipart_splits_are_balanced(demo_pool_small):
    summary = json.loads((demo_pool_small / "summary.json").read_text())
    splits = demo_pool_small / "splits"
    test = {c.name: len(_files(c)) for c in (splits / "clipart_test").iterdir()}
    train = {c.name: len(_files(c)) for c in (splits / "clipart_train").iterdir()}
    assert test == summary["splits"]["clipart_test"]["classes"]
    assert sorted(test) == sorted(train) and len(test) >= 2 and "unsorted" not in test  # excluded grab-bag
    # Small pool: max_per_category 8, min 4 -> every kept category holds out the same 2 (half the smallest, 4).
    assert len(set(test.values())) == 1, test
    assert all(n <= 8 - next(iter(test.values())) for n in train.values())
    # Categories too small for the splits are still in the unlabelled pool, as are the excluded ones.
    pool = {c.name for c in (demo_pool_small / "pool" / "openclipart").iterdir()}
    assert set(test) < pool and "unsorted" in pool


def test_balanced_categories_rule():
    cfg = DemoPoolConfig(
        clipart_min_per_category=100,
        clipart_test_per_category=40,
        clipart_train_per_category=250,
        clipart_exclude=["unsorted"],
    )
    counts = {"computer": 1796, "tools": 123, "buttons": 3, "unsorted": 150, "people": 345}
    assert balanced_categories(counts, cfg) == {"computer": (40, 250), "tools": (40, 83), "people": (40, 250)}
    # the held-out count drops to half the smallest kept category so that every class has the same test count
    small = cfg.model_copy(update={"clipart_min_per_category": 50})
    assert balanced_categories({"a": 60, "b": 500}, small) == {"a": (30, 30), "b": (30, 250)}
    capped = cfg.model_copy(update={"max_per_category": 120})
    assert balanced_categories(counts, capped) == {"computer": (40, 80), "tools": (40, 80), "people": (40, 80)}
    try:
        balanced_categories({"a": 500, "b": 20}, cfg)
    except AmoeError as e:
        assert "clipart_min_per_category" in str(e) and "lower it" in str(e)
    else:
        raise AssertionError("expected AmoeError")


def test_rerun_is_noop(demo_pool_small):
    before = {p: p.stat().st_mtime_ns for p in _files(demo_pool_small)}
    params = small_params(demo_pool={"out": str(demo_pool_small)})
    run(params)
    assert {p: p.stat().st_mtime_ns for p in _files(demo_pool_small)} == before


def test_no_apt_explains_folder_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    params = small_params(demo_pool={"out": str(tmp_path / "demo"), "debs": str(tmp_path / "empty-debs")})
    try:
        run(params)
    except AmoeError as e:
        assert "folder:" in str(e) and "ingest" in str(e)
    else:
        raise AssertionError("expected AmoeError")
    assert not (tmp_path / "demo").exists()


def test_apt_failure_is_amoe_error(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    try:
        demo_pool.download_debs(tmp_path / "debs")
    except AmoeError as e:
        assert "Unable to locate package" in str(e) and "folder:" in str(e)
    else:
        raise AssertionError("expected AmoeError")


def test_stamp_captions_and_segmentation_split(demo_pool_small):
    """Every pool stamp with a description has its English caption and category keywords; the segmentation split
    is readable by the evaluation's VOC reader."""
    from amoe_core.data.demo_captions import TUXPAINT_CAPTIONS
    from amoe_core.eval.segmentation import load_voc_pair

    lines = [json.loads(line) for line in (demo_pool_small / TUXPAINT_CAPTIONS).read_text().splitlines()]
    assert lines and all((demo_pool_small / item["image"]).is_file() for item in lines)
    for item in lines:
        category = Path(item["image"]).parts[2]  # pool/tuxpaint/<category>/<file>
        assert item["keywords"].split()[0] == category and item["caption"].startswith(item["keywords"] + ": ")
        assert "utf8=" not in item["caption"]  # the English line, not a translation
    train, test = load_voc_pair(f"voc:{demo_pool_small / 'segmentation'}", f"voc:{demo_pool_small / 'segmentation'}")
    assert (len(train), len(test)) == (8, 4)
    summary = json.loads((demo_pool_small / "summary.json").read_text())
    assert summary["captions"]["tuxpaint"] == len(lines) and summary["segmentation"]["val"]["images"] == 4
