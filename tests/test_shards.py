"""The shard-set contract (amoe_core/data/shards.py) on real tars: manifest checks, selection, shard paths, and
reading (row, image bytes) in a given order from any position, with every disagreement a one-line error."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_embed import build_shards

from amoe_core.data.shards import (
    iter_images,
    read_manifest,
    read_shard,
    reading_order,
    select,
    shard_path,
    tar_end,
    tar_sample,
)
from amoe_core.errors import AmoeError


def _tar_images(shards: Path) -> dict[str, bytes]:
    """Every sample's png bytes read with plain tarfile: the reference the readers are checked against."""
    out = {}
    for tar in shards.glob("shard-*.tar"):
        with tarfile.open(tar) as tf:
            out.update({m.name.split(".")[0]: tf.extractfile(m).read() for m in tf if m.name.endswith(".png")})
    return out


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(AmoeError, match="embed.shards = .*shard directory does not exist"):
        read_manifest(tmp_path / "absent", "embed.shards")
    with pytest.raises(AmoeError, match="manifest.parquet does not exist; run `amoe data ingest`"):
        read_manifest(tmp_path)
    manifest = build_shards(tmp_path / "s", {"a": 3})
    assert read_manifest(tmp_path / "s").equals(manifest)
    with pytest.raises(AmoeError, match=r"lacks column\(s\) \['phash'\]"):
        read_manifest(tmp_path / "s", columns=("key", "shard", "phash"))
    manifest.iloc[[0, 1, 0]].to_parquet(tmp_path / "s" / "manifest.parquet")
    with pytest.raises(AmoeError, match="lists key 'a_00000' twice"):
        read_manifest(tmp_path / "s")
    manifest.iloc[:0].to_parquet(tmp_path / "s" / "manifest.parquet")
    with pytest.raises(AmoeError, match="empty shard set"):
        read_manifest(tmp_path / "s")


def test_select_keeps_manifest_order(tmp_path: Path) -> None:
    manifest = build_shards(tmp_path / "s", {"a": 6})
    assert select(manifest, None, "f", tmp_path / "s").equals(manifest)
    pd.DataFrame({"key": ["a_00004", "a_00001"]}).to_parquet(tmp_path / "sel.parquet")
    assert select(manifest, tmp_path / "sel.parquet", "f", tmp_path / "s")["key"].tolist() == ["a_00001", "a_00004"]
    pd.DataFrame({"key": ["a_00001", "zz"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(AmoeError, match=r"1 selected key\(s\) are not in .*\(e.g. 'zz'\)"):
        select(manifest, tmp_path / "bad.parquet", "f", tmp_path / "s")
    with pytest.raises(AmoeError, match="my.selection = .*selection parquet does not exist"):
        select(manifest, tmp_path / "none.parquet", "my.selection", tmp_path / "s")


def test_shard_path_forms(tmp_path: Path) -> None:
    assert shard_path(tmp_path, 3) == shard_path(tmp_path, np.int64(3)) == tmp_path / "shard-000003.tar"
    assert shard_path(tmp_path, "sub/x.tar") == tmp_path / "sub" / "x.tar"
    assert shard_path(tmp_path, "/elsewhere/x.tar") == Path("/elsewhere/x.tar")


def test_iter_images_in_order_and_from_any_position(tmp_path: Path) -> None:
    shards = tmp_path / "s"
    manifest = build_shards(shards, {"a": 7, "b": 8}, shard_size=5)
    manifest = manifest.iloc[np.r_[10:15, 0:10]].reset_index(drop=True)  # shards listed out of order
    order = reading_order(manifest)
    assert (
        manifest["shard"].to_numpy()[order].tolist()
        == ["shard-000002.tar"] * 5 + ["shard-000000.tar"] * 5 + ["shard-000001.tar"] * 5
    )
    reference = _tar_images(shards)
    full = list(iter_images(shards, manifest, order, 0))
    assert [row for row, _ in full] == order.tolist()
    assert all(data == reference[manifest["key"].iat[row]] for row, data in full)
    # resuming mid-shard: shards holding only earlier rows are never opened (here: they are gone)
    (shards / "shard-000002.tar").unlink()
    assert list(iter_images(shards, manifest, order, 7)) == full[7:]
    # a subset of whole shards, as an embedding rank reads it
    part = order[5:10]
    assert list(iter_images(shards, manifest, part, 0)) == full[5:10]


def test_iter_images_names_disagreements(tmp_path: Path) -> None:
    shards = tmp_path / "s"
    manifest = build_shards(shards, {"a": 6}, shard_size=3)
    extra = pd.concat([manifest, manifest.iloc[[0]].assign(key="ghost", shard="shard-000001.tar")], ignore_index=True)
    with pytest.raises(AmoeError, match="shard-000001.tar holds fewer samples than manifest.parquet lists"):
        list(iter_images(shards, extra, reading_order(extra), 0))
    short = manifest.iloc[:5]
    with pytest.raises(AmoeError, match="shard-000001.tar holds more samples than manifest.parquet lists"):
        list(iter_images(shards, short, reading_order(short), 0))
    gone = manifest.assign(shard=manifest["shard"].str.replace("000001", "000009"))
    with pytest.raises(AmoeError, match="names shard 'shard-000009.tar' but .* does not exist"):
        list(iter_images(shards, gone, reading_order(gone), 0))
    # a sample with metadata but no image entry
    record = tar_sample("k0", {"json": json.dumps({"label": "x"}).encode()})
    (shards / "shard-000000.tar").write_bytes(record + tar_end(len(record)))
    one = pd.DataFrame({"key": ["k0"], "shard": ["shard-000000.tar"]})
    assert [(s.key, s.image, json.loads(s.meta)) for s in read_shard(shards / "shard-000000.tar")] == [
        ("k0", None, {"label": "x"})
    ]
    with pytest.raises(AmoeError, match=r"sample 'k0' has no image entry \(jpg/jpeg/png/webp\)"):
        list(iter_images(shards, one, reading_order(one), 0))
