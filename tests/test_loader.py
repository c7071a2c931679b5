"""Streaming packed loader over real WebDataset shards: exact epochs across ranks x workers, resume, labels."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from PIL import Image

from amoe_core.config import PackingConfig
from amoe_core.data.loader import PackedShardDataset, build_loader
from amoe_core.data.resolution import patchify, resize_to_grid
from amoe_core.errors import AmoeError

PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "page", "text", "horse", "clock", "coins"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 shards of real images: skimage photos at several sizes and aspect ratios + labelled sklearn digits."""
    skdata = pytest.importorskip("skimage.data")
    from sklearn.datasets import load_digits

    out = tmp_path_factory.mktemp("shards")
    images: list[tuple[Image.Image, str | None]] = []
    for j, name in enumerate(PHOTOS):
        img = Image.fromarray(getattr(skdata, name)())
        for scale in (0.15, 0.3, 0.6):
            images.append((img.resize((max(16, int(img.width * scale)), max(16, int(img.height * scale)))), None))
        images.append((img.crop((0, 0, img.width, img.height // (2 + j % 3))), None))  # wide strips
    digits = load_digits()
    for i in range(24):
        side = 16 + 8 * (i % 4)
        arr = (digits.images[i] * 255 / 16).astype(np.uint8)
        images.append((Image.fromarray(arr).resize((side, side)), str(digits.target[i])))
    rows = []
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=25, verbose=0) as sink:
        for i, (img, label) in enumerate(images):
            key, buf = f"img{i:04d}", io.BytesIO()
            fmt = "png" if i % 2 else "jpg"
            img.convert("RGB").save(buf, format="PNG" if fmt == "png" else "JPEG", quality=92)
            meta = {"source": "digits" if label else "photos", "label": label, "width": img.width, "height": img.height}
            sink.write({"__key__": key, fmt: buf.getvalue(), "json": json.dumps(meta).encode()})
            rows.append(
                {
                    "key": key,
                    "shard": f"shard-{i // 25:06d}.tar",
                    "source": meta["source"],
                    "label": label,
                    "width": img.width,
                    "height": img.height,
                    "format": fmt,
                }
            )
    pd.DataFrame(rows).to_parquet(out / "manifest.parquet")
    return out


def cfg(**kw):
    base = dict(
        c_max=64,
        max_images_per_seq=6,
        min_tokens=2,
        max_tokens=40,
        seqs_per_step=2,
        shuffle_buffer=16,
        workers=0,
        token_sampling="loguniform",
    )
    return PackingConfig(**{**base, **kw})


def _keys(batches):
    return [k for b in batches for k in b.keys]


def test_epoch_covers_every_selected_image_once_across_ranks_and_workers(shards):
    manifest = pd.read_parquet(shards / "manifest.parquet")
    sel = shards / "sel.parquet"
    manifest[["key"]].iloc[::2].to_parquet(sel)  # half of the pool
    per_rank = []
    for rank in range(2):
        loader = build_loader(cfg(workers=2), shards, sel, seed=3, rank=rank, world_size=2, epoch=1)
        per_rank.append(list(loader))
        assert len(per_rank[-1]) == len(loader) > 0
    assert len(per_rank[0]) == len(per_rank[1])  # same step count on every rank: DDP never waits
    keys = _keys(per_rank[0]) + _keys(per_rank[1])
    assert sorted(keys) == sorted(manifest["key"].iloc[::2])
    for k, (b0, b1) in enumerate(zip(*per_rank)):  # the k-th steps of both ranks: equal tokens
        assert b0.patches.shape == b1.patches.shape and b0.n_images >= 1 and b1.n_images >= 1
        rows = 2 if k < len(per_rank[0]) - 2 else b0.patches.shape[0]  # S rows of c_max but in the last round
        assert b0.patches.shape == (rows, 64, 16 * 16 * 3) and 1 <= rows <= 2
    for b in per_rank[0] + per_rank[1]:
        # PackedBatch canonical order: ids appear in order; per-image token counts match image_sizes
        ids = b.token_image_id
        assert torch.equal(ids, torch.sort(ids).values) and ids.unique().numel() == b.n_images
        assert torch.equal(torch.bincount(ids, minlength=b.n_images), b.image_sizes.prod(1))
        for seq in b.image_id:
            assert seq[seq >= 0].unique().numel() <= 6  # image cap per sequence
            assert (seq >= 0).sum() == 0 or (seq[: int((seq >= 0).sum())] >= 0).all()  # padding only at the end


def test_batch_content_is_the_resized_image_of_its_key(shards):
    ds = PackedShardDataset(cfg(token_sampling="native"), shards, None, seed=0)
    batch = next(iter(ds))
    with wds.WebDataset(str(shards / "shard-{000000..000002}.tar"), shardshuffle=False, empty_check=False) as src:
        raw = {s["__key__"]: s for s in src}
    for n, key in enumerate(batch.keys):
        sample = raw[key]
        img = Image.open(io.BytesIO(sample.get("png") or sample.get("jpg")))
        rows, cols = batch.image_sizes[n].tolist()
        expected = resize_to_grid(img, rows, cols, 16)
        assert torch.equal(batch.images[n], expected)
        patches, coords = patchify(expected, 16)
        sel = batch.image_id == n
        assert torch.equal(batch.patches[sel], patches) and torch.equal(batch.coords[sel], coords)
        # aspect kept: grid ratio close to the stored image's ratio
        assert abs(np.log((rows / cols) / (img.height / img.width))) < 0.7


def test_resume_at_start_step_yields_the_remaining_steps(shards):
    c = cfg(workers=2)
    full = list(build_loader(c, shards, None, seed=5, rank=0, world_size=1, epoch=2))
    resumed = list(build_loader(c, shards, None, seed=5, rank=0, world_size=1, epoch=2, start_step=3))
    assert [b.keys for b in resumed] == [b.keys for b in full[3:]]
    assert torch.equal(resumed[0].patches, full[3].patches)
    other_epoch = list(build_loader(c, shards, None, seed=5, rank=0, world_size=1, epoch=3))
    assert _keys(other_epoch) != _keys(full) and sorted(_keys(other_epoch)) == sorted(_keys(full))


def test_labels_from_manifest_and_fixed_mode(shards):
    ds = PackedShardDataset(cfg(mode="fixed", images_per_step=5), shards, None, seed=0)
    batches = list(ds)
    assert [b.n_images for b in batches[:-1]] == [5] * (len(batches) - 1)
    for b in batches:
        assert b.patches.shape[0] == b.n_images  # one image per row, rows padded to the step's longest image
        assert b.patches.shape[1] == int(b.image_sizes.prod(1).max())
    labelled = [(k, int(lab)) for b in batches if b.labels is not None for k, lab in zip(b.keys, b.labels)]
    manifest = pd.read_parquet(shards / "manifest.parquet").set_index("key")
    assert len(labelled) > 0 and ds.label_names == [str(d) for d in range(10)]
    for key, lab in labelled:
        want = manifest.loc[key, "label"]
        assert lab == (-1 if pd.isna(want) else ds.label_names.index(want))


def test_fixed_mode_defaults_to_the_packed_token_budget(shards):
    packed = list(PackedShardDataset(cfg(), shards, None, seed=0))
    fixed_ds = PackedShardDataset(cfg(mode="fixed"), shards, None, seed=0)
    fixed = list(fixed_ds)
    tokens = fixed_ds.grids[:, 0] * fixed_ds.grids[:, 1]
    per_step = round(cfg().seqs_per_step * cfg().c_max / tokens.mean())
    assert 1 < per_step < len(tokens)
    assert [b.n_images for b in fixed[:-1]] == [per_step] * (len(fixed) - 1)

    def real_tokens(batches) -> float:  # patch tokens of images, padding excluded, per full step
        return float(np.mean([int(b.image_sizes.prod(1).sum()) for b in batches[:-1]]))

    # the same epoch in about as many steps: each fixed step carries a packed step's tokens on average
    assert real_tokens(fixed) == pytest.approx(real_tokens(packed), rel=0.15)
    assert abs(len(fixed) - len(packed)) <= 1


def test_bad_inputs_are_one_line_errors(shards, tmp_path):
    with pytest.raises(AmoeError, match="does not exist"):
        build_loader(cfg(), tmp_path, None, 0, 0, 1)
    pd.DataFrame({"key": ["nope"]}).to_parquet(tmp_path / "sel.parquet")
    with pytest.raises(AmoeError, match="1 selected key"):
        build_loader(cfg(), shards, tmp_path / "sel.parquet", 0, 0, 1)
    with pytest.raises(AmoeError, match="start_step"):
        build_loader(cfg(), shards, None, 0, 0, 1, start_step=10_000)
    bad = tmp_path / "bad"
    bad.mkdir()
    m = pd.read_parquet(shards / "manifest.parquet")
    m["shard"] = [str(shards / s) for s in m["shard"]]
    m.loc[0, "width"] += 1
    m.to_parquet(bad / "manifest.parquet")
    with pytest.raises(AmoeError, match="manifest says"):
        list(build_loader(cfg(max_images_per_seq=1, seqs_per_step=1), bad, None, 0, 0, 1))
