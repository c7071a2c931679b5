"""Reading a shard set written by ingest: `shard-XXXXXX.tar` WebDataset tars + `manifest.parquet`.

Each sample holds `__key__`, one image entry (`jpg` or `png`, RGB) and `json` ({"source", "label", "width",
"height"}); `wds.WebDataset(shard_urls(d)).decode("pil")` reads them. The manifest has one row per stored image, in
shard order: key, shard, source, label, path, orig_width, orig_height, width, height, orig_format, format, sha256,
phash (signed int64), bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from amoe_core.errors import require_path

MANIFEST = "manifest.parquet"
REPORT = "ingest_report.json"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def shard_urls(shards_dir: str | Path) -> list[str]:
    """The shard files of a shard set, in order (as the manifest's `shard` column names them)."""
    d = Path(shards_dir)
    require_path("shards", d / MANIFEST, "shard manifest")
    return [str(d / s) for s in sorted(read_manifest(d)["shard"].unique())]


def read_manifest(shards_dir: str | Path) -> pd.DataFrame:
    path = Path(shards_dir) / MANIFEST
    require_path("shards", path, "shard manifest")
    return pd.read_parquet(path)


def iter_images(
    shards_dir: str | Path, keys: Iterable[str] | None = None
) -> Iterator[tuple[str, Image.Image, dict[str, Any]]]:
    """(key, RGB PIL image, json metadata) for every sample, or only for `keys`, in shard order.

    Reads tars directly (no worker processes): meant for evaluation and tooling, not for training throughput.
    """
    d = Path(shards_dir)
    man = read_manifest(d)
    wanted = None if keys is None else set(keys)
    shards = man["shard"].unique() if wanted is None else man.loc[man["key"].isin(wanted), "shard"].unique()
    for shard in sorted(shards):
        with tarfile.open(d / shard) as tf:
            sample: dict[str, Any] = {}
            for m in tf:
                base, _, ext = m.name.partition(".")
                if sample and sample["__key__"] != base:
                    yield from _emit(sample, wanted)
                    sample = {}
                sample["__key__"] = base
                sample[ext] = tf.extractfile(m).read()
            if sample:
                yield from _emit(sample, wanted)


def _emit(sample: dict[str, Any], wanted: set[str] | None) -> Iterator[tuple[str, Image.Image, dict[str, Any]]]:
    key = sample["__key__"]
    if wanted is not None and key not in wanted:
        return
    data = sample.get("jpg") or sample.get("png")
    meta = json.loads(sample.get("json", b"{}"))
    img = Image.open(io.BytesIO(data))
    img.load()
    yield key, img.convert("RGB"), meta
