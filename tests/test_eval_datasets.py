"""Labelled evaluation datasets: folder:PATH and shards:PATH, square resizing, clear errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from amoe_core.errors import AmoeError
from amoe_core.eval.datasets import load_labelled, load_pair

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


def make_folder(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog", "emu")) -> Path:
    for c in classes:
        (root / c / "nested").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sub = root / c / ("nested" if i == 0 else "")
            Image.new("RGB", (20 + i, 30), COLOURS[c]).save(sub / f"{c}{i}.png")
    return root


def test_folder_dataset_labels_and_square_images(tmp_path: Path) -> None:
    ds = load_labelled(f"folder:{make_folder(tmp_path / 'train')}")
    assert ds.classes == ["cat", "dog", "emu"]
    assert np.bincount(ds.labels).tolist() == [3, 3, 3]  # nested files inside a class folder count too
    for i in range(len(ds)):
        img = ds.image(i, 32)
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        expected = torch.tensor(COLOURS[ds.classes[ds.labels[i]]], dtype=torch.float32) / 255
        torch.testing.assert_close(img.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)
    batches = list(ds.batches(16, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 1] and batches[0].shape[1:] == (3, 16, 16)


def test_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / c / "x.png")
    img = load_labelled(f"folder:{tmp_path}").image(0, 16)
    assert torch.all(img == 1.0)


def test_test_split_shares_label_ids_and_train_is_subsampled(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=10)
    make_folder(tmp_path / "test", per_class=2, classes=("emu", "cat"))
    train, test = load_pair(f"folder:{tmp_path / 'train'}", f"folder:{tmp_path / 'test'}", max_train=12, seed=0)
    assert len(train) == 12 and test.classes == train.classes == ["cat", "dog", "emu"]
    assert sorted(test.labels.tolist()) == [0, 0, 2, 2]
    again, _ = load_pair(f"folder:{tmp_path / 'train'}", f"folder:{tmp_path / 'test'}", max_train=12, seed=0)
    assert again.sources == train.sources and again.fingerprint() == train.fingerprint()
    other, _ = load_pair(f"folder:{tmp_path / 'train'}", f"folder:{tmp_path / 'test'}", max_train=12, seed=1)
    assert other.fingerprint() != train.fingerprint()


def test_folder_errors_are_one_clear_line(tmp_path: Path) -> None:
    make_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(AmoeError, match=r"only one class \('cat'\)"):
        load_labelled(f"folder:{tmp_path / 'one'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "dog").mkdir()
    (tmp_path / "empty" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(AmoeError, match=r"no images in class subfolders .*\(it holds no images\)"):
        load_labelled(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "loose" / "a.png")
    with pytest.raises(AmoeError, match="move them into one subfolder per class"):
        load_labelled(f"folder:{tmp_path / 'loose'}")
    make_folder(tmp_path / "tr", classes=("cat", "dog"))
    make_folder(tmp_path / "te", classes=("cat", "emu"))
    with pytest.raises(AmoeError, match=r"classes \['emu'\] do not occur in the training split"):
        load_pair(f"folder:{tmp_path / 'tr'}", f"folder:{tmp_path / 'te'}", None, 0)
    with pytest.raises(AmoeError, match="expected folder:PATH"):
        load_labelled(f"{tmp_path}")
    with pytest.raises(AmoeError, match="does not exist"):
        load_labelled(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "b").mkdir()
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "b" / "y.png")
    with pytest.raises(AmoeError, match="cannot decode image .*x.png"):
        load_labelled(f"folder:{tmp_path / 'bad'}").image(0, 16)


def _write_shards(path: Path, samples: list[tuple[str, str | None, tuple[int, int, int], str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path / "shard-000000.tar")) as sink:
        for key, label, colour, fmt in samples:
            buf = io.BytesIO()
            Image.new("RGB", (24, 16), colour).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
            meta = {"source": "test", "label": label, "width": 24, "height": 16}
            sink.write({"__key__": key, fmt: buf.getvalue(), "json": json.dumps(meta).encode()})


def test_labelled_shards(tmp_path: Path) -> None:
    _write_shards(
        tmp_path / "shards",
        [
            ("k0", "dog", (0, 0, 255), "png"),
            ("k1", None, (9, 9, 9), "png"),  # unlabelled: skipped
            ("k2", "cat", (255, 0, 0), "jpg"),
            ("k3", "dog", (0, 0, 255), "jpg"),
        ],
    )
    ds = load_labelled(f"shards:{tmp_path / 'shards'}")
    assert ds.classes == ["cat", "dog"] and ds.sources == ["k0", "k2", "k3"] and ds.labels.tolist() == [1, 0, 1]
    torch.testing.assert_close(ds.image(1, 16).mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.02, rtol=0)
    sub = ds.subset([2])
    assert sub.sources == ["k3"] and sub.image(0, 16).shape == (3, 16, 16)
    _write_shards(tmp_path / "unlabelled", [("k0", None, (0, 0, 0), "png")])
    with pytest.raises(AmoeError, match="no labelled images in the shards"):
        load_labelled(f"shards:{tmp_path / 'unlabelled'}")
    (tmp_path / "none").mkdir()
    with pytest.raises(AmoeError, match="no shard .tar files"):
        load_labelled(f"shards:{tmp_path / 'none'}")
