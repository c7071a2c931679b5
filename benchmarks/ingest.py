"""Ingest throughput (all cores: decode, validate, hash, dedup, shard write) vs a plain single-process PIL loop that
only decodes and re-encodes the same images, measured in the same run. Target: ratio >= 1.5 on 2 cores.

    .venv/bin/python benchmarks/ingest.py [--pool data/demo/pool] [--limit N] [--repeat R]
    .venv/bin/python benchmarks/ingest.py --smoke    # seconds, on a sample pool of real photos (make test runs it)

The loop is the fair floor for "decode + re-encode": the same files, the same decompression-bomb rule (files ingest
skips for their pixel count are skipped, not decoded), the same stored format and settings (JPEG at the configured
quality for JPEG inputs, PNG at compress_level 1 otherwise), at full resolution with no compositing, hashing or
writing. On a machine shared with other jobs the two are measured in interleaved pairs (loop first, then ingest first,
...) with the page cache warm, and the ratio is the median over pairs; the load average is printed alongside.
The ratio (loop seconds over ingest seconds, i.e. ingest images/s over loop images/s) is printed on the last line.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from _smoke import parse_and_compare, sample_pool
from PIL import Image

from amoe_core.config import IngestConfig, load_params
from amoe_core.data.ingest import ingest
from amoe_core.data.sources import Item, list_items, parse_source


def plain_loop(paths: list[str], max_pixels: int, quality: int) -> None:
    """Decode + convert to RGB + re-encode (JPEG for JPEG inputs, PNG otherwise, as ingest stores them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's palette-transparency notes: printing thousands would slow the loop
        Image.MAX_IMAGE_PIXELS = max_pixels
        for p in paths:
            try:
                with Image.open(p) as im:
                    if im.width * im.height > max_pixels:  # ingest skips these as decompression bombs
                        continue
                    fmt = im.format
                    rgb = im.convert("RGB")
                buf = io.BytesIO()
                if fmt in ("JPEG", "MPO"):
                    rgb.save(buf, "JPEG", quality=quality)
                else:
                    rgb.save(buf, "PNG", compress_level=1)
            except Exception:  # the loop skips what it cannot decode, as ingest does
                continue


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ingest workers)."""
    return sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result)."""
    c, t = cpu_seconds(), time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, cpu_seconds() - c, result


def ingest_into_temp(items: list[Item], pool: str, cfg: IngestConfig) -> dict:
    out = Path(tempfile.mkdtemp(prefix="amoe-bench-ingest-"))
    try:
        return ingest(items, [f"folder:{pool}"], out / "shards", cfg)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="data/demo/pool", help="a folder of images (default: the demo pool)")
    ap.add_argument("--limit", type=int, default=0, help="a seeded random subset of this many files (0 = all)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved (loop, ingest) pairs; the median ratio counts")
    parse_and_compare(ap, compare, smoke, "a sample pool of real photos, not --pool")


def smoke(args: argparse.Namespace, tmp: Path) -> None:
    args.pool, args.repeat = str(sample_pool(tmp / "pool", 40)), 1


def compare(args: argparse.Namespace) -> None:
    cfg = load_params().ingest
    items = list_items([parse_source(f"folder:{args.pool}", "--pool")])
    if args.limit:
        items = sorted(random.Random(0).sample(items, min(args.limit, len(items))), key=lambda it: it.key)
    paths = [it.path for it in items]
    for p in paths:  # warm the page cache so that neither side pays the first read from disk
        with open(p, "rb") as f:
            f.read()
    n = len(items)
    print(f"files: {n}  cores: {os.cpu_count()}  workers: {cfg.workers or 'all cores'}  load average: {load()}")
    ratios, t_loops, t_ingests, c_loops, c_ingests = [], [], [], [], []
    for r in range(args.repeat):
        order = ("loop", "ingest") if r % 2 == 0 else ("ingest", "loop")
        for what in order:
            if what == "loop":
                t_loop, c_loop, _ = timed(plain_loop, paths, cfg.max_pixels, cfg.jpeg_quality)
            else:
                t_ingest, c_ingest, report = timed(ingest_into_temp, items, args.pool, cfg)
        ratios.append(t_loop / t_ingest)
        t_loops.append(t_loop)
        t_ingests.append(t_ingest)
        c_loops.append(c_loop)
        c_ingests.append(c_ingest)
        # CPU seconds over wall seconds = the cores each side actually got: on a shared machine (Linux groups CPU
        # shares per session) ingest may get far fewer than all cores, and the ratio then only reflects CPU work.
        print(
            f"pair {r + 1}: ingest {t_ingest:.1f}s ({n / t_ingest:.0f} images/s, {c_ingest:.1f} CPU-s, "
            f"{c_ingest / t_ingest:.2f} cores)  loop {t_loop:.1f}s ({n / t_loop:.0f} images/s, {c_loop:.1f} CPU-s, "
            f"{c_loop / t_loop:.2f} cores)  ratio {t_loop / t_ingest:.2f}  load average: {load()}"
        )
    dups = report["duplicates"]["removed"]
    print(f"ingest kept: {report['kept']}  skipped: {report['skipped_total']}  duplicates removed: {dups}")
    t_i, t_l = statistics.median(t_ingests), statistics.median(t_loops)
    print(f"ingest (median): {t_i:.1f}s  {n / t_i:.0f} images/s")
    print(f"plain single-process decode+re-encode loop (median): {t_l:.1f}s  {n / t_l:.0f} images/s")
    c_i, c_l = statistics.median(c_ingests), statistics.median(c_loops)
    print(
        f"CPU work: ingest {c_i:.1f} CPU-s, loop {c_l:.1f} CPU-s; on {os.cpu_count()} free cores ingest would take about "
        f"{c_i / os.cpu_count():.1f}s (ratio ~{c_l / (c_i / os.cpu_count()):.2f}, an upper bound ignoring its serial part)"
    )
    print(f"ratio ingest/loop (median of {len(ratios)} interleaved pairs): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
