"""Ingest throughput (all cores: decode, validate, hash, dedup, shard write) vs a plain single-process PIL loop that
only decodes and re-encodes the same images, measured in the same run. Target: ratio >= 1.5 on 2 cores.

    .venv/bin/python benchmarks/ingest.py [--pool data/demo/pool] [--limit N]

The ratio (ingest images/s over loop images/s) is printed on the last line.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from amoe_core.config import load_params
from amoe_core.data.ingest import ingest
from amoe_core.data.sources import list_items, parse_source


def plain_loop(paths: list[str], max_pixels: int, quality: int) -> float:
    """Decode + convert to RGB + re-encode (JPEG for JPEG inputs, PNG otherwise, as ingest stores them)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    t = time.perf_counter()
    for p in paths:
        try:
            with Image.open(p) as im:
                fmt = im.format
                rgb = im.convert("RGB")
            buf = io.BytesIO()
            if fmt == "JPEG":
                rgb.save(buf, "JPEG", quality=quality)
            else:
                rgb.save(buf, "PNG", compress_level=1)
        except Exception:  # the loop skips what it cannot decode, as ingest does
            continue
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="data/demo/pool", help="a folder of images (default: the demo pool)")
    ap.add_argument("--limit", type=int, default=0, help="a seeded random subset of this many files (0 = all)")
    args = ap.parse_args()
    params = load_params()
    cfg = params.ingest
    items = list_items([parse_source(f"folder:{args.pool}", "--pool")])
    if args.limit:
        items = sorted(random.Random(0).sample(items, min(args.limit, len(items))), key=lambda it: it.key)
    out = Path(tempfile.mkdtemp(prefix="amoe-bench-ingest-"))
    try:
        t = time.perf_counter()
        report = ingest(items, [f"folder:{args.pool}"], out / "shards", cfg)
        t_ingest = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    t_loop = plain_loop([it.path for it in items], cfg.max_pixels, cfg.jpeg_quality)
    n = len(items)
    print(
        f"files: {n}  kept: {report['kept']}  skipped: {report['skipped_total']}  dups: {report['duplicates']['removed']}"
    )
    print(f"ingest (workers={cfg.workers or 'all cores'}): {t_ingest:.1f}s  {n / t_ingest:.0f} images/s")
    print(f"plain single-process decode+re-encode loop: {t_loop:.1f}s  {n / t_loop:.0f} images/s")
    print(f"ratio ingest/loop: {t_loop / t_ingest:.2f}")


if __name__ == "__main__":
    main()
