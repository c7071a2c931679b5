"""`amoe data ingest`: image sources -> validated, deduplicated WebDataset shards + manifest.parquet.

Every image is decoded exactly once. Three phases, each resumable:
1. stage: a process pool decodes, validates, bounds, re-encodes and hashes chunks of files; each chunk lands
   atomically in `OUT/.staging/chunk-XXXXXX.parquet` (encoded bytes + metadata, or the skip reason).
   A re-run skips staged chunks.
2. dedup: exact (sha256 of the file) and near (pHash) duplicates are decided on metadata alone (`dedup.py`).
3. assemble: kept images are copied from the staged bytes into `shard-XXXXXX.tar` files, each written under a
   temporary name and renamed; existing shards are skipped. Then manifest.parquet and ingest_report.json.
`OUT/.ingest_state.json` holds a fingerprint of the inputs (files, sizes, mtimes) and settings: a run with the same
fingerprint resumes (or does nothing when complete); anything else starts over.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from amoe_core.config import IngestConfig, Params
from amoe_core.data.decode import SKIP_REASONS, Decoded, DecodeSettings, decode_image
from amoe_core.data.dedup import deduplicate
from amoe_core.data.shards import MANIFEST, REPORT, shard_name
from amoe_core.data.sources import Item, list_items, parse_source, read_item
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path, atomic_write_json
from amoe_core.progress import progress

log = logging.getLogger(__name__)

STATE = ".ingest_state.json"
STAGING = ".staging"
META_COLUMNS = [
    "key", "source", "label", "path", "status", "detail", "orig_width", "orig_height", "width", "height",
    "orig_format", "format", "sha256", "phash", "bytes",
]  # fmt: skip
MANIFEST_COLUMNS = [
    "key", "shard", "source", "label", "path", "orig_width", "orig_height", "width", "height", "orig_format",
    "format", "sha256", "phash", "bytes",
]  # fmt: skip


def run(params: Params, sources: list[str] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    cfg = params.ingest
    field = "--source" if sources else "ingest.sources"
    specs = [parse_source(s, field) for s in (sources or cfg.sources)]
    out = Path(out) if out is not None else cfg.out
    items = list_items(specs)
    if not items:
        raise AmoeError(f"{field}: no files in {', '.join(map(str, specs))}; point it at a folder of images")
    return ingest(items, [str(s) for s in specs], out, cfg)


def decode_settings(cfg: IngestConfig) -> DecodeSettings:
    return DecodeSettings(
        max_side=cfg.max_side,
        min_side=cfg.min_side,
        max_pixels=cfg.max_pixels,
        background=tuple(cfg.background),
        jpeg_quality=cfg.jpeg_quality,
        store_format=cfg.store_format,
        skip_extension_mismatch=cfg.on_extension_mismatch == "skip",
    )


def ingest(items: list[Item], sources: list[str], out: Path, cfg: IngestConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    settings = decode_settings(cfg)
    fp = _fingerprint(items, settings, cfg)
    state = _read_json(out / STATE)
    if state.get("fingerprint") == fp and state.get("complete") and _outputs_present(out, state):
        log.info("ingest: %s is up to date (%d images); nothing to do", out, state["kept"])
        return _read_json(out / REPORT)
    if state.get("fingerprint") != fp:  # same fingerprint: resume (staged chunks and finished shards are reused)
        _reset(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / STATE, {"fingerprint": fp, "complete": False})
    staging = out / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*"):  # a shard being written when a previous run was killed
        stale.unlink()

    chunks = [items[i : i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
    n_staged = _stage(chunks, staging, settings, cfg.workers)
    meta = _read_staged_meta(staging, len(chunks))
    ok = meta[meta["status"] == "ok"].reset_index(drop=True)
    dd = deduplicate(ok, cfg.phash_distance, cfg.phash_min_side)
    kept = ok[dd.keep].reset_index(drop=True)
    kept["shard"] = [shard_name(i // cfg.shard_size) for i in range(len(kept))]
    written = _assemble(kept, staging, out)

    manifest = kept[MANIFEST_COLUMNS]
    with atomic_path(out / MANIFEST, suffix=".parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    seconds = time.perf_counter() - t0
    report = _report(meta, kept, dd.groups, sources, out, seconds, n_staged, written)
    atomic_write_json(out / REPORT, report)
    atomic_write_json(
        out / STATE, {"fingerprint": fp, "complete": True, "kept": len(kept), "shards": sorted(kept["shard"].unique())}
    )
    if not cfg.keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "ingest: %d files -> %d images in %d shards (%d skipped, %d duplicates) in %.1fs, %.0f images/s",
        len(meta), len(kept), kept["shard"].nunique(), report["skipped_total"], report["duplicates"]["removed"],
        seconds, report["images_per_s"],
    )  # fmt: skip
    return report


# ---------------------------------------------------------------------------------------------------------- stage
def _chunk_path(staging: Path, c: int) -> Path:
    return staging / f"chunk-{c:06d}.parquet"


def _stage(chunks: list[list[Item]], staging: Path, s: DecodeSettings, workers: int) -> int:
    """Decode every chunk not staged yet; returns how many images were decoded in this run."""
    todo = [c for c in range(len(chunks)) if not _chunk_path(staging, c).exists()]
    done = sum(len(chunks[c]) for c in range(len(chunks)) if c not in set(todo))
    n_workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    bar = progress(total=sum(len(ch) for ch in chunks), initial=done, unit="img", desc="ingest", smoothing=0.1)
    with bar:
        if n_workers <= 1:
            for c in todo:
                bar.update(stage_chunk(c, chunks[c], s, staging))
        else:
            # fork: workers start in milliseconds and inherit the imports; spawn elsewhere (macOS, Windows).
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
                # At most 2 chunks in flight per worker keeps memory flat on huge pools.
                pending, queue = set(), list(reversed(todo))
                while queue or pending:
                    while queue and len(pending) < 2 * n_workers:
                        c = queue.pop()
                        pending.add(pool.submit(stage_chunk, c, chunks[c], s, staging))
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        bar.update(f.result())
    return sum(len(chunks[c]) for c in todo)


def stage_chunk(c: int, items: list[Item], s: DecodeSettings, staging: Path) -> int:
    """Worker: decode one chunk of files and stage the result atomically. Returns the number of files."""
    rows: dict[str, list] = {k: [] for k in [*META_COLUMNS, "data"]}
    for it in items:
        try:
            data = read_item(it)
        except OSError as e:
            res: Any = None
            detail = f"unreadable: {e}"
        else:
            res = decode_image(data, it.name, s)
            detail = "" if isinstance(res, Decoded) else res.detail
        d = res if isinstance(res, Decoded) else None
        row = {
            "key": it.key, "source": it.source, "label": it.label, "path": it.path if it.offset < 0 else
            f"{it.path}:{it.name}", "status": "ok" if d else (res.reason if res is not None else "corrupt"),
            "detail": detail, "orig_width": d.orig_width if d else 0, "orig_height": d.orig_height if d else 0,
            "width": d.width if d else 0, "height": d.height if d else 0, "orig_format": d.orig_format if d else "",
            "format": d.format if d else "", "sha256": d.sha256 if d else "", "phash": d.phash if d else 0,
            "bytes": len(d.data) if d else 0, "data": d.data if d else b"",
        }  # fmt: skip
        for k, v in row.items():
            rows[k].append(v)
    table = pa.table(rows, schema=_STAGE_SCHEMA)
    with atomic_path(_chunk_path(staging, c), suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="none")  # encoded images do not compress further
    return len(items)


_STAGE_SCHEMA = pa.schema(
    [("key", pa.string()), ("source", pa.string()), ("label", pa.string()), ("path", pa.string()),
     ("status", pa.string()), ("detail", pa.string()), ("orig_width", pa.int32()), ("orig_height", pa.int32()),
     ("width", pa.int32()), ("height", pa.int32()), ("orig_format", pa.string()), ("format", pa.string()),
     ("sha256", pa.string()), ("phash", pa.int64()), ("bytes", pa.int64()), ("data", pa.binary())]
)  # fmt: skip


def _read_staged_meta(staging: Path, n_chunks: int) -> pd.DataFrame:
    frames = []
    for c in range(n_chunks):
        df = pq.read_table(_chunk_path(staging, c), columns=META_COLUMNS).to_pandas()
        df["chunk"], df["row"] = c, range(len(df))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------- assemble
def _assemble(kept: pd.DataFrame, staging: Path, out: Path) -> list[str]:
    """Write every shard that does not exist yet from the staged bytes; returns the shards written now."""
    missing = {s for s in kept["shard"].unique() if not (out / s).exists()}
    todo = kept[kept["shard"].isin(missing)]
    writer: _ShardWriter | None = None
    for c, rows in todo.groupby("chunk", sort=True):
        data = pq.read_table(_chunk_path(staging, int(c)), columns=["data"]).column("data")
        for r in rows.itertuples(index=False):
            if writer is None or writer.name != r.shard:
                if writer is not None:
                    writer.commit()
                writer = _ShardWriter(out, r.shard)
            meta = {"source": r.source, "label": r.label, "width": int(r.width), "height": int(r.height)}
            writer.tar.write({"__key__": r.key, r.format: data[int(r.row)].as_py(), "json": json.dumps(meta).encode()})
    if writer is not None:
        writer.commit()
    return sorted(missing)


class _ShardWriter:
    """A WebDataset tar written under a hidden temporary name and renamed when complete."""

    def __init__(self, out: Path, name: str) -> None:
        self.name, self.final, self.tmp = name, out / name, out / f".{name}.tmp"
        self.file = open(self.tmp, "wb")
        # mtime=0: identical inputs give byte-identical shards (a resumed run can be checked against a fresh one).
        self.tar = wds.TarWriter(self.file, mtime=0)

    def commit(self) -> None:
        self.tar.close()  # closes the tar stream; the file object stays ours
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.final)


# ---------------------------------------------------------------------------------------------------------- report
def _report(
    meta: pd.DataFrame, kept: pd.DataFrame, groups: list[dict], sources: list[str], out: Path, seconds: float,
    n_staged: int, written: list[str],
) -> dict[str, Any]:  # fmt: skip
    skipped = meta[meta["status"] != "ok"]
    counts = {r: int((skipped["status"] == r).sum()) for r in SKIP_REASONS}
    files = {
        r: [{"path": p, "detail": d} for p, d in zip(g["path"], g["detail"])]
        for r, g in skipped.groupby("status", sort=True)
    }
    per_source = {}
    for src, g in meta.groupby("source", sort=True):
        per_source[src] = {
            "files": len(g),
            "skipped": int((g["status"] != "ok").sum()),
            "kept": int((kept["source"] == src).sum()),
        }
    n_exact = sum(len(g["dropped"]) for g in groups if g["kind"] == "exact")
    n_near = sum(len(g["dropped"]) for g in groups if g["kind"] == "near")
    return {
        "sources": sources,
        "out": str(out),
        "files": len(meta),
        "decoded": int((meta["status"] == "ok").sum()),
        "kept": len(kept),
        "shards": int(kept["shard"].nunique()),
        "skipped_total": int(len(skipped)),
        "skipped": counts,
        "skipped_files": files,
        "duplicates": {"removed": n_exact + n_near, "exact": n_exact, "near": n_near, "groups": groups},
        "per_source": per_source,
        "seconds": round(seconds, 3),
        "decoded_this_run": n_staged,
        "shards_written_this_run": written,
        "images_per_s": round(n_staged / seconds, 1) if seconds > 0 else 0.0,
    }


# ---------------------------------------------------------------------------------------------------------- state
def _fingerprint(items: list[Item], s: DecodeSettings, cfg: IngestConfig) -> str:
    h = hashlib.sha256()
    settings = {**asdict(s), "phash_distance": cfg.phash_distance, "phash_min_side": cfg.phash_min_side,
                "shard_size": cfg.shard_size, "chunk_size": cfg.chunk_size, "version": 1}  # fmt: skip
    h.update(json.dumps(settings, sort_keys=True).encode())
    buf = io.StringIO()
    for it in items:
        buf.write(f"{it.key}\t{it.path}\t{it.name}\t{it.size}\t{it.mtime_ns}\t{it.offset}\t{it.label}\n")
    h.update(buf.getvalue().encode())
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _outputs_present(out: Path, state: dict[str, Any]) -> bool:
    return (out / MANIFEST).exists() and (out / REPORT).exists() and all((out / s).exists() for s in state["shards"])


def _reset(out: Path) -> None:
    """Remove what a previous ingest into `out` wrote (and nothing else)."""
    if not out.exists():
        return
    for p in [*out.glob("shard-*.tar"), *out.glob(".shard-*"), out / MANIFEST, out / REPORT, out / STATE]:
        p.unlink(missing_ok=True)
    shutil.rmtree(out / STAGING, ignore_errors=True)
