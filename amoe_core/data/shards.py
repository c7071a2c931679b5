"""The shard set: the contract between ingest, which writes it, and everything downstream (loader, embed, curation
plots, evaluation datasets), which reads it through this module only.

A shard set is a folder of `shard-XXXXXX.tar` WebDataset tars + `manifest.parquet`. Each sample holds `__key__`, one
image entry (`jpg` or `png`, RGB) and `json` ({"source", "label", "width", "height"}); plain
`wds.WebDataset(urls).decode("pil")` reads them. The manifest has one row per stored image, in shard order
(`MANIFEST_COLUMNS`: phash is a signed int64; path and sha256 name and hash the source file); a `shard` value names
its tar relative to the shard folder (or absolutely, or as a shard number).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from amoe_core.errors import AmoeError, require_path

MANIFEST = "manifest.parquet"
REPORT = "ingest_report.json"
# The manifest's columns, in order; readers need only some (`read_manifest(columns=)`)
MANIFEST_COLUMNS = [
    "key", "shard", "source", "label", "path", "orig_width", "orig_height", "width", "height", "orig_format",
    "format", "sha256", "phash", "bytes",
]  # fmt: skip

# The sample entries a shard reader takes as the image, in the order it looks for them: ingest writes jpg or png;
# jpeg and webp are how other WebDataset writers name theirs.
IMAGE_ENTRIES = ("jpg", "jpeg", "png", "webp")
# File suffixes read as images where files are picked by name: evaluation folders (`folder:PATH`), the demo
# teachers' folders, and the tar members of foreign shards given to ingest. A different fact from IMAGE_ENTRIES
# (what a shard sample holds): these are the common names of the raster formats `decode.FORMAT_EXTENSIONS` decodes
# (its rare aliases jpe/jfif/mpo/dib are left out). Ingest's folder source reads every file whatever its suffix.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

# What webdataset's TarWriter(mtime=0) writes for every member; `tar_sample` reproduces it byte for byte.
TAR_USER, TAR_MODE = "bigdata", 0o444


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def tar_sample(key: str, entries: dict[str, bytes]) -> bytes:
    """One WebDataset sample as the tar records `wds.TarWriter(f, mtime=0)` writes for it (entries in sorted order,
    each a header block then the data padded to 512 bytes). A shard is these records concatenated + `tar_end`:
    ingest's workers build them in parallel, so writing a shard is a byte copy.
    """
    parts = []
    for ext in sorted(entries):
        data = entries[ext]
        parts += [_tar_header(f"{key}.{ext}", len(data)), data, bytes(-len(data) % tarfile.BLOCKSIZE)]
    return b"".join(parts)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, TAR_MODE, TAR_USER, TAR_USER
    return ti


_HEADER = _tarinfo("", 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _tar_header(name: str, size: int) -> bytes:
    """`TarInfo.tobuf` for our members, byte for byte, at a fraction of its cost (~30 us per header in pure Python
    adds up on 28x28 images that decode in 60 us): a ustar template with the name, size and checksum filled in.
    Names over 100 bytes need a PAX header: tarfile writes those.
    """
    raw = name.encode()
    if len(raw) > 100 or not raw.isascii() or size >= 8**11:
        return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_HEADER)
    h[0 : len(raw)] = raw
    h[124:136] = b"%011o\0" % size
    h[148:156] = b" " * 8  # the checksum is the byte sum with its own field read as spaces
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tar_end(size: int) -> bytes:
    """The end of a tar archive of `size` bytes of records: two zero blocks, then zeros up to a whole record."""
    size += 2 * tarfile.BLOCKSIZE
    return bytes(2 * tarfile.BLOCKSIZE + (-size % tarfile.RECORDSIZE))


# ---------------------------------------------------------------------------------------------------------- read
def read_manifest(
    shards: str | Path, field: str = "shards", columns: tuple[str, ...] = ("key", "shard")
) -> pd.DataFrame:
    """manifest.parquet of the shard set in `shards` (`field` names the setting in errors). An absent folder or
    manifest, a missing one of `columns`, an empty set and a key listed twice are user errors."""
    require_path(field, shards, "shard directory")
    path = Path(shards) / MANIFEST
    if not path.exists():
        raise AmoeError(f"{field} = {str(shards)!r}: {MANIFEST} does not exist; run `amoe data ingest` to build shards")
    manifest = pd.read_parquet(path)
    missing = sorted(set(columns) - set(manifest.columns))
    if missing:
        raise AmoeError(f"{path} lacks column(s) {missing}; rebuild the shards with `amoe data ingest`")
    if len(manifest) == 0:
        raise AmoeError(f"{field} = {str(shards)!r} is an empty shard set (0 images in {MANIFEST}); "
                        f"ingest some images first")  # fmt: skip
    if manifest["key"].duplicated().any():
        dup = manifest["key"][manifest["key"].duplicated()].iloc[0]
        raise AmoeError(f"{path} lists key {dup!r} twice; rebuild the shards with `amoe data ingest`")
    return manifest


def select(manifest: pd.DataFrame, selection: Path | None, field: str, shards: str | Path) -> pd.DataFrame:
    """The manifest rows (manifest order, fresh index) whose keys a selection parquet lists; every row when
    `selection` is None. A selected key that is not in the manifest is a user error."""
    if selection is None:
        return manifest.reset_index(drop=True)
    require_path(field, selection, "selection parquet")
    keys = pd.read_parquet(selection, columns=["key"])["key"]
    unknown = ~keys.isin(manifest["key"])
    if unknown.any():
        raise AmoeError(
            f"{selection}: {int(unknown.sum())} selected key(s) are not in {Path(shards) / MANIFEST} "
            f"(e.g. {keys[unknown].iloc[0]!r}); re-run the curation stages for these shards"
        )
    return manifest[manifest["key"].isin(set(keys))].reset_index(drop=True)


def shard_path(shards: str | Path, shard: object) -> Path:
    """The tar of a manifest `shard` value: a file name/path relative to the shard directory, or a shard number."""
    if isinstance(shard, int | np.integer):
        return Path(shards) / shard_name(int(shard))
    p = Path(str(shard))
    return p if p.is_absolute() else Path(shards) / p


def reading_order(manifest: pd.DataFrame) -> np.ndarray:
    """Manifest row indices in the order the tars are read: shard by shard (first appearance), rows in order."""
    first = {s: i for i, s in reversed(list(enumerate(manifest["shard"])))}
    rank = manifest["shard"].map(first).to_numpy()
    return np.argsort(rank, kind="stable")


class Sample(NamedTuple):
    key: str
    image: bytes | None  # the encoded image: the first of IMAGE_ENTRIES the sample holds (None: it holds none)
    meta: bytes | None  # the json entry, unparsed


def read_shard(path: str | Path) -> Iterator[Sample]:
    """Every sample of one tar, in written order. The caller chooses which shards a process reads: no node or
    worker splitting here."""
    import webdataset as wds  # imports torch (~1.5 s): ingest, which only writes shards, does not pay for it

    dataset = wds.WebDataset(str(path), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)
    for s in dataset:
        yield Sample(s["__key__"], next((s[e] for e in IMAGE_ENTRIES if e in s), None), s.get("json"))


def image_of(sample: Sample, path: str | Path) -> bytes:
    """The sample's encoded image; a sample without one means the shard set is damaged."""
    if sample.image is None:
        raise AmoeError(f"{path}: sample {sample.key!r} has no image entry ({'/'.join(IMAGE_ENTRIES)}); "
                        f"re-run `amoe data ingest`")  # fmt: skip
    return sample.image


def iter_images(shards: Path, manifest: pd.DataFrame, order: np.ndarray, start: int) -> Iterator[tuple[int, bytes]]:
    """(manifest row, encoded image bytes) for the rows `order` lists, from position `start`, checking every key
    against the manifest. `order` holds each shard's rows contiguously, in written order (as `reading_order` and
    any selection of whole shards from it do). Shards holding only rows before `start` are not opened."""
    pos = start
    shard_col = manifest["shard"].to_numpy()
    keys = manifest["key"].to_numpy()
    while pos < len(order):
        shard = shard_col[order[pos]]
        path = shard_path(shards, shard)
        if not path.exists():
            raise AmoeError(f"manifest.parquet names shard {shard!r} but {path} does not exist; re-run ingest")
        first = pos  # rows of this shard occupy a contiguous run of `order`
        while first > 0 and shard_col[order[first - 1]] == shard:
            first -= 1
        seen = first
        for sample in read_shard(path):
            if seen >= len(order) or shard_col[order[seen]] != shard:
                raise AmoeError(f"{path} holds more samples than manifest.parquet lists for it; re-run ingest")
            if sample.key != keys[order[seen]]:
                raise AmoeError(f"{path} holds key {sample.key!r} where manifest.parquet expects "
                                f"{keys[order[seen]]!r}; shards and manifest disagree, re-run ingest")  # fmt: skip
            if seen >= pos:
                yield int(order[seen]), image_of(sample, path)
                pos += 1
            seen += 1
        if pos < len(order) and shard_col[order[pos]] == shard:
            raise AmoeError(f"{path} holds fewer samples than manifest.parquet lists for it; re-run ingest")
