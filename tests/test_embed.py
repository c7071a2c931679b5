"""`amoe curate embed`: rows aligned with the manifest, resumable after a kill, clear errors on bad shard sets.

Shards are built here with webdataset in the ingest layout; the encoder is a tiny random-weight transformers
DINOv3ViTModel saved with save_pretrained and loaded through the real teacher loader (`hf:PATH`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from amoe_core.config import Params
from amoe_core.curation import embed
from amoe_core.errors import AmoeError
from amoe_core.models.teachers import loader


def make_image(rng: np.random.Generator, source: str) -> Image.Image:
    """Stand-ins for the demo sources: 'grey' images are near-identical, 'colour' images vary widely."""
    if source == "grey":
        base = np.full((24, 24, 3), 128, np.uint8)
        return Image.fromarray(np.clip(base + rng.integers(-4, 5, (24, 24, 1)), 0, 255).astype(np.uint8))
    colour = rng.integers(0, 256, 3)
    arr = np.zeros((24, 24, 3), np.uint8) + colour.astype(np.uint8)
    y, x = rng.integers(0, 16, 2)
    arr[y : y + 8, x : x + 8] = 255 - colour
    return Image.fromarray(arr)


def build_shards(out: Path, counts: dict[str, int], shard_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """A shard set in the ingest layout: shard-XXXXXX.tar (key, png, json) + manifest.parquet."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    samples = [(src, i) for src, n in counts.items() for i in range(n)]
    for start in range(0, len(samples), shard_size):
        shard = f"shard-{start // shard_size:06d}.tar"
        with wds.TarWriter(str(out / shard)) as sink:
            for src, i in samples[start : start + shard_size]:
                buf = io.BytesIO()
                make_image(rng, src).save(buf, format="PNG")
                key = f"{src}_{i:05d}"
                meta = {"source": src, "label": None, "width": 24, "height": 24}
                sink.write({"__key__": key, "png": buf.getvalue(), "json": json.dumps(meta).encode()})
                rows.append({"key": key, "shard": shard, "source": src, "label": None, "width": 24, "height": 24})
    manifest = pd.DataFrame(rows, columns=["key", "shard", "source", "label", "width", "height"])
    manifest.to_parquet(out / "manifest.parquet", index=False)
    return manifest


def save_tiny_encoder(path: Path) -> Path:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
        num_register_tokens=4, image_size=32,
    )  # fmt: skip
    DINOv3ViTModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("enc") / "dinov3-tiny")


def embed_params(tmp: Path, encoder: Path, **extra) -> Params:
    return Params(
        embed={
            "shards": tmp / "shards",
            "encoder": f"hf:{encoder}",
            "image_size": 32,
            "batch_size": 8,
            "out": tmp / "emb",
            **extra,
        }  # fmt: skip
    )


def test_rows_follow_the_manifest(tmp_path: Path, encoder_dir: Path) -> None:
    manifest = build_shards(tmp_path / "shards", {"grey": 10, "colour": 13}, shard_size=7)
    # the manifest may list shards in any order: rows must still follow it
    manifest = manifest.iloc[np.r_[7:14, 0:7, 14:23]].reset_index(drop=True)
    manifest.to_parquet(tmp_path / "shards" / "manifest.parquet", index=False)
    params = embed_params(tmp_path, encoder_dir)
    out = embed.run(params)
    emb = np.load(out / "embeddings.npy", mmap_mode="r")
    meta = json.loads((out / "meta.json").read_text())
    assert emb.dtype == np.float16 and emb.shape == (23, meta["dim"]) and meta["count"] == 23
    assert pd.read_parquet(out / "keys.parquet")["key"].tolist() == manifest["key"].tolist()
    assert not (out / "parts").exists() and meta["world_size"] == 1

    # reference: embed rows 0 and 20 of the manifest one at a time, straight from the tar
    import webdataset as wds

    teacher = loader.load_teacher(embed.encoder_spec(params))
    for row in (0, 20):
        key, shard = manifest.loc[row, ["key", "shard"]]
        sample = next(
            s for s in wds.WebDataset(str(tmp_path / "shards" / shard), shardshuffle=False) if s["__key__"] == key
        )
        ref = teacher([embed.to_tensor(sample["png"], 32)]).summary[0].numpy()
        np.testing.assert_allclose(emb[row].astype(np.float32), ref, rtol=1e-2, atol=1e-2)


class Killed(Exception):
    pass


def test_resumes_from_last_complete_batch(tmp_path: Path, encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_shards(tmp_path / "shards", {"grey": 20, "colour": 21}, shard_size=9)
    params = embed_params(tmp_path, encoder_dir)
    real_load = loader.load_teacher
    seen: list[int] = []

    def counting_load(spec, device="cpu", kill_after: int | None = None):
        teacher = real_load(spec, device)
        forward = teacher.forward

        def wrapped(images, grid=None):
            if kill_after is not None and len(seen) == kill_after:
                raise Killed
            seen.append(len(images))
            return forward(images, grid)

        teacher.forward = wrapped
        return teacher

    monkeypatch.setattr(embed, "load_teacher", lambda spec, device="cpu": counting_load(spec, device, 3))
    with pytest.raises(Killed):
        embed.run(params)
    out = tmp_path / "emb"
    # three complete batches; a batch never spans two shards of 9: 8 + 1 + 8
    assert json.loads((out / "parts" / "00000-of-00001" / "progress.json").read_text())["done"] == 17
    assert not (out / "meta.json").exists()  # not complete, so no consumer takes it for finished

    seen.clear()
    monkeypatch.setattr(embed, "load_teacher", lambda spec, device="cpu": counting_load(spec, device))
    embed.run(params)
    assert sum(seen) == 41 - 17  # only the rest was embedded
    resumed = np.load(out / "embeddings.npy")

    monkeypatch.setattr(embed, "load_teacher", real_load)
    fresh = embed.run(embed_params(tmp_path, encoder_dir, out=tmp_path / "fresh"))
    np.testing.assert_array_equal(resumed, np.load(fresh / "embeddings.npy"))


def test_bad_shard_sets(tmp_path: Path, encoder_dir: Path) -> None:
    params = embed_params(tmp_path, encoder_dir)
    with pytest.raises(AmoeError, match="does not exist"):
        embed.run(params)
    build_shards(tmp_path / "shards", {"grey": 0})
    with pytest.raises(AmoeError, match="empty shard set"):
        embed.run(params)
    manifest = build_shards(tmp_path / "shards", {"grey": 5, "colour": 5}, shard_size=10)
    manifest.loc[3, "key"] = "renamed"
    manifest.to_parquet(tmp_path / "shards" / "manifest.parquet", index=False)
    with pytest.raises(AmoeError, match="shards and manifest disagree"):
        embed.run(params)
    assert not (tmp_path / "emb" / "meta.json").exists()
    with pytest.raises(AmoeError, match="hf:PATH or timm:PATH"):
        embed.run(Params(embed={"encoder": "onnx:/x"}))
