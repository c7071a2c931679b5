"""`amoe data ingest`: image sources -> validated, deduplicated WebDataset shards + manifest.parquet.

Every image is decoded exactly once. Three phases, each resumable:
1. stage (`staging.py`): a process pool decodes, validates, bounds, re-encodes and hashes chunks of files into
   `OUT/.staging/`, each chunk atomically; a re-run skips the chunks already staged.
2. dedup: exact (sha256 of the file) and near (pHash) duplicates are decided on metadata alone (`dedup.py`).
3. assemble: each shard not on disk yet is the kept images' records copied as byte ranges from the staged .bin
   files (no per-image work left in the serial phase), written under a temporary name and renamed. Then
   manifest.parquet and ingest_report.json.
`OUT/.ingest_state.json` holds a fingerprint of the inputs (files, sizes, mtimes) and settings: a run with the same
fingerprint resumes (or does nothing when complete); anything else starts over.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from amoe_core.config.ingest import IngestConfig
from amoe_core.data.decode import SKIP_REASONS, DecodeSettings
from amoe_core.data.dedup import deduplicate
from amoe_core.data.shards import MANIFEST, MANIFEST_COLUMNS, REPORT, shard_name, tar_end
from amoe_core.data.sources import Item, list_items, parse_source
from amoe_core.data.staging import chunk_path, stage
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path, atomic_write_json, naming_errors, remove_stale_temporaries
from amoe_core.outputs import claim_outputs, mark_output

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

STATE = ".ingest_state.json"
OUT_STAGE = "ingest.out"  # the marker an ingest output carries (amoe_core/outputs.py)
STAGING = ".staging"


def run(params: Params, sources: list[str] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    cfg = params.ingest
    field = "--source" if sources else "ingest.sources"
    specs = [parse_source(s, field) for s in (sources or cfg.sources)]
    out_field = "--out" if out is not None else "ingest.out"
    out = Path(out) if out is not None else cfg.out
    inputs = {f"{field}[{i}]": s.path for i, s in enumerate(specs)}
    with claim_outputs({out_field: out}, inputs, owner=OUT_STAGE, legacy=(STATE,)):
        unlisted: list[dict[str, str]] = []
        items = list_items(specs, unlisted)
        if not items:
            first = (
                f" ({len(unlisted)} paths left out, e.g. {unlisted[0]['path']}: {unlisted[0]['detail']})"
                if unlisted
                else ""
            )
            raise AmoeError(f"{field}: nothing usable found in {', '.join(map(str, specs))}: no files{first}; "
                            "point it at a folder of images")  # fmt: skip
        return ingest(items, [str(s) for s in specs], out, cfg, unlisted)


def decode_settings(cfg: IngestConfig) -> DecodeSettings:
    return DecodeSettings(
        max_side=cfg.max_side,
        min_side=cfg.min_side,
        max_pixels=cfg.max_pixels,
        background=tuple(cfg.background),
        jpeg_quality=cfg.jpeg_quality,
        store_format=cfg.store_format,
        skip_extension_mismatch=cfg.on_extension_mismatch == "skip",
        max_bytes=cfg.max_bytes,
    )


def ingest(
    items: list[Item], sources: list[str], out: Path, cfg: IngestConfig, unlisted: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """`unlisted`: paths the listing left out (not regular files, loops, unreadable folders), for the report."""
    t0 = time.perf_counter()
    settings = decode_settings(cfg)
    fp = _fingerprint(items, settings, cfg)
    state = _read_json(out / STATE)
    remove_stale_temporaries(out / MANIFEST, ".parquet")  # a killed run's (we hold the lock: none is live)
    if state.get("fingerprint") == fp and state.get("complete") and _outputs_present(out, state):
        log.info("ingest: %s is up to date (%d images); nothing to do", out, state["kept"])
        if not cfg.keep_staging:  # a run killed after it finished but before it tidied up
            shutil.rmtree(out / STAGING, ignore_errors=True)
        return _read_json(out / REPORT)
    if state.get("fingerprint") != fp:  # same fingerprint: resume (staged chunks and finished shards are reused)
        _reset(out)
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out, OUT_STAGE)
        atomic_write_json(out / STATE, {"fingerprint": fp, "complete": False})
    staging = out / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*"):  # a shard being written when a previous run was killed
        stale.unlink()

    chunks = [items[i : i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
    meta, n_staged = stage(chunks, staging, settings, cfg.workers)
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
    report["unlisted"] = _group(unlisted or [])
    atomic_write_json(out / REPORT, report)
    if len(kept) == 0:  # an empty shard set is no result: say so (the report beside it says why each was skipped)
        why = ", ".join(f"{n} {r}" for r, n in report["skipped"].items() if n) or "no files"
        raise AmoeError(f"nothing usable found in {', '.join(sources)}: no image was kept ({why}; "
                        f"{sum(map(len, report['unlisted'].values()))} paths left out); see {out / REPORT}")  # fmt: skip
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


# ---------------------------------------------------------------------------------------------------------- assemble
def _assemble(kept: pd.DataFrame, staging: Path, out: Path) -> list[str]:
    """Write every shard that does not exist yet from the staged records; returns the shards written now."""
    missing = sorted(s for s in kept["shard"].unique() if not (out / s).exists())
    todo = kept[kept["shard"].isin(missing)]
    for shard, rows in todo.groupby("shard", sort=True):
        tmp, size = out / f".{shard}.tmp", 0
        with open(tmp, "wb") as f, naming_errors(tmp):
            for c, lo, hi in _byte_runs(rows):
                with open(chunk_path(staging, c, ".bin"), "rb") as src:
                    src.seek(lo)
                    f.write(src.read(hi - lo))
                size += hi - lo
            f.write(tar_end(size))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / shard)
    return missing


def _byte_runs(rows: pd.DataFrame) -> list[tuple[int, int, int]]:
    """Rows (in shard order) -> (chunk, start, end) byte ranges, merging rows that sit back to back in one chunk."""
    runs: list[list[int]] = []
    for c, off, n in zip(rows["chunk"].tolist(), rows["offset"].tolist(), rows["length"].tolist()):
        if runs and runs[-1][0] == c and runs[-1][2] == off:
            runs[-1][2] = off + n
        else:
            runs.append([c, off, off + n])
    return [(c, lo, hi) for c, lo, hi in runs]


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


def _group(unlisted: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """{reason: [{path, detail}]}: every path the listing left out, by why."""
    out: dict[str, list[dict[str, str]]] = {}
    for u in sorted(unlisted, key=lambda u: (u["reason"], u["path"])):
        out.setdefault(u["reason"], []).append({"path": u["path"], "detail": u["detail"]})
    return out


# ---------------------------------------------------------------------------------------------------------- state
def _fingerprint(items: list[Item], s: DecodeSettings, cfg: IngestConfig) -> str:
    h = hashlib.sha256()
    settings = {**asdict(s), "phash_distance": cfg.phash_distance, "phash_min_side": cfg.phash_min_side,
                "shard_size": cfg.shard_size, "chunk_size": cfg.chunk_size, "version": 2}  # fmt: skip
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
