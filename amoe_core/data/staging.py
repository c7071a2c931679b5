"""Ingest's first phase: decode, validate, bound, re-encode and hash every file, in chunks, on a process pool.

Each chunk lands atomically as `chunk-XXXXXX.bin` (every kept image already laid out as its shard's tar records) and
then `chunk-XXXXXX.parquet` (metadata, skip reasons, byte ranges in the .bin); the parquet marks the chunk done, so
a re-run skips it. Workers hand the metadata back to the main process, which never re-reads what it just staged.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from amoe_core.data.decode import Decoded, DecodeSettings, Skip, decode_image
from amoe_core.data.shards import tar_sample
from amoe_core.data.sources import Item, TooLarge, read_item
from amoe_core.io import write_named
from amoe_core.progress import progress

# One row per file: what the manifest keeps of it, why it was skipped, where its records lie in the chunk's .bin
STAGE_SCHEMA = pa.schema(
    [("key", pa.string()), ("source", pa.string()), ("label", pa.string()), ("path", pa.string()),
     ("status", pa.string()), ("detail", pa.string()), ("orig_width", pa.int32()), ("orig_height", pa.int32()),
     ("width", pa.int32()), ("height", pa.int32()), ("orig_format", pa.string()), ("format", pa.string()),
     ("sha256", pa.string()), ("phash", pa.int64()), ("bytes", pa.int64()), ("offset", pa.int64()),
     ("length", pa.int64())]
)  # fmt: skip
META_COLUMNS = STAGE_SCHEMA.names


def chunk_path(staging: Path, c: int, suffix: str = ".parquet") -> Path:
    return staging / f"chunk-{c:06d}{suffix}"


def stage(chunks: list[list[Item]], staging: Path, s: DecodeSettings, workers: int) -> tuple[pd.DataFrame, int]:
    """Decode every chunk not staged yet. Returns the metadata of all chunks (in chunk order) and how many files were
    decoded in this run."""
    metas: dict[int, dict[str, list]] = {}
    todo = []
    for c in range(len(chunks)):
        meta = read_staged(staging, c)
        if meta is not None and len(meta["key"]) == len(chunks[c]):
            metas[c] = meta
        else:
            todo.append(c)
    # Largest chunks first (bytes on disk predict decode time well: one huge clip-art costs as much as a thousand
    # fashion-mnist digits): the pool's last chunk is then a short one and no core idles long at the end.
    todo.sort(key=lambda c: (-sum(it.size for it in chunks[c]), c))
    n_workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    bar = progress(total=sum(map(len, chunks)), initial=sum(len(chunks[c]) for c in metas), unit="img", desc="ingest")
    with bar:
        if n_workers <= 1:
            for c in todo:
                metas[c] = stage_chunk(c, chunks[c], s, staging)
                bar.update(len(chunks[c]))
        else:
            # fork: workers start in milliseconds and inherit the imports; spawn elsewhere (macOS, Windows).
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(
                n_workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                # At most 2 chunks in flight per worker keeps memory flat on huge pools.
                pending: dict[Future, int] = {}
                queue = list(reversed(todo))
                while queue or pending:
                    while queue and len(pending) < 2 * n_workers:
                        c = queue.pop()
                        pending[pool.submit(stage_chunk, c, chunks[c], s, staging)] = c
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        c = pending.pop(f)
                        metas[c] = f.result()
                        bar.update(len(chunks[c]))
    frames = []
    for c in range(len(chunks)):
        df = pa.table(metas[c], schema=STAGE_SCHEMA).to_pandas()  # the staged dtypes, however the chunk arrived
        df["chunk"] = c
        frames.append(df)
    return pd.concat(frames, ignore_index=True), sum(len(chunks[c]) for c in todo)


def die_with_parent(parent: int) -> None:
    """Pool worker start-up (Linux): the kernel SIGKILLs this worker when the ingest process dies, even by SIGKILL,
    instead of leaving it decoding for minutes."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def stage_chunk(c: int, items: list[Item], s: DecodeSettings, staging: Path) -> dict[str, list]:
    """Worker: decode one chunk of files, stage it atomically (.bin of tar records, then the .parquet that marks the
    chunk done) and return its metadata columns."""
    rows: dict[str, list] = {k: [] for k in META_COLUMNS}
    records: list[bytes] = []
    offset = 0
    for it in items:
        try:
            data = read_item(it, s.max_bytes)
        except TooLarge as e:
            res = Skip("too_large", str(e))
        except OSError as e:
            res: Decoded | Skip = Skip("corrupt", f"unreadable: {e}")
        else:
            res = decode_image(data, it.name, s)
        d = res if isinstance(res, Decoded) else None
        record = b""
        if d is not None:
            meta = {"source": it.source, "label": it.label, "width": d.width, "height": d.height}
            record = tar_sample(it.key, {d.format: d.data, "json": json.dumps(meta).encode()})
            records.append(record)
        row = {
            "key": it.key, "source": it.source, "label": it.label, "path": it.path if it.offset < 0 else
            f"{it.path}:{it.name}", "status": "ok" if d else res.reason, "detail": "" if d else res.detail,
            "orig_width": d.orig_width if d else 0, "orig_height": d.orig_height if d else 0,
            "width": d.width if d else 0, "height": d.height if d else 0, "orig_format": d.orig_format if d else "",
            "format": d.format if d else "", "sha256": d.sha256 if d else "", "phash": d.phash if d else 0,
            "bytes": len(d.data) if d else 0, "offset": offset, "length": len(record),
        }  # fmt: skip
        offset += len(record)
        for k, v in row.items():
            rows[k].append(v)
    # Temporary name + rename, without fsync: a killed run never leaves a partial chunk, and staging is a cache that
    # `read_staged` checks on resume (a chunk damaged by a system crash is decoded again). The shards, manifest and
    # report, which are the results, are fsynced.
    bin_path, meta_path = chunk_path(staging, c, ".bin"), chunk_path(staging, c)
    tmp = staging / f".{bin_path.name}.{os.getpid()}.tmp"
    write_named(tmp, b"".join(records))
    os.replace(tmp, bin_path)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(rows, schema=STAGE_SCHEMA), buf)
    write_named(tmp, buf.getvalue().to_pybytes())
    os.replace(tmp, meta_path)  # last: the parquet marks the chunk done
    return rows


def read_staged(staging: Path, c: int) -> dict[str, list] | None:
    """A staged chunk's metadata, or None when it is missing or damaged (then it is staged again)."""
    try:
        meta = pq.read_table(chunk_path(staging, c)).to_pydict()
        size = chunk_path(staging, c, ".bin").stat().st_size
    except (OSError, pa.ArrowException):
        return None
    if list(meta) != META_COLUMNS or size != sum(meta["length"]):
        return None
    return meta
