"""`demo_pool.long_tail`: the unlabelled pool redrawn with the web's long tail (Vo et al. 2024's premise).

A web pool is dominated by a few concepts and by near-duplicates of their pictures; the plain demo pool is not
(1,200 images per fashion-mnist class). This redraws `pool/` from the pictures the plain build just put there (so the
labelled test splits stay disjoint from it and balanced per class):

- a *concept* is a pool folder name (`pool/<source>/<concept>/`), merged across sources (clip-art and Tux Paint
  `animals` are one concept);
- concept ranks are drawn at random (seeded), each rank r taking a concept that has enough distinct pictures for
  it where one is left, so fashion-mnist classes and clip-art categories mix over head and tail;
- rank r holds round(head * r^-exponent) images (Zipf), of which a share near_duplicates * n_r / head are
  near-duplicates of its own picked pictures (the head concept's share is `long_tail_near_duplicates`, the tail's
  about none: web redundancy sits on popular pictures); a concept with too few pictures holds fewer (the recorded
  frequencies are the real ones);
- near-duplicates are what a crawl holds after exact dedup: a mirror image, a crop (70-90% of each side) or a JPEG
  re-encode of the picture, never byte-identical to one another (a repeat becomes a crop). `ingest`'s perceptual-hash dedup (distance <= 4, images >= 32 px) removes most clip-art
  re-encodes, as a pHash near-dedup of a web pool would, while mirrors and most crops survive it; fashion-mnist images
  (28 px) only take part in exact dedup, so all of theirs survive (tests/test_demo_longtail.py measures this).

`summary.json` gets `long_tail` (settings, and rank / images / distinct pictures / near-duplicates per concept) and
`concept_frequencies`; `concept_frequencies.json` ({concept: images}) is what `evaluate.class_frequencies` reads.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from amoe_core.config.demo_pool import DemoPoolConfig
from amoe_core.data.decode import to_rgb
from amoe_core.io import atomic_write_json

FREQUENCIES = "concept_frequencies.json"
NEAR_DUP_KINDS = ("flip", "crop", "reencode")
MAX_DUP_PIXELS = 4_000_000  # near-duplicates are made of pictures up to this size (huge clip-art takes seconds each)


def zipf_counts(n_concepts: int, head: int, exponent: float) -> list[int]:
    """Images per rank 1..n: round(head * r^-exponent), at least 1."""
    return [max(1, round(head * r**-exponent)) for r in range(1, n_concepts + 1)]


def near_duplicate_counts(counts: list[int], share: float) -> list[int]:
    """Near-duplicates per rank: a share `share * n_r / n_1` of its n_r images (redundancy sits on the head)."""
    return [round(share * n * n / counts[0]) for n in counts]


def assign_ranks(available: dict[str, int], needed: list[int], rng: random.Random) -> list[str]:
    """Concept per rank: in a random order, the first concept left with at least `needed[r]` distinct pictures,
    else the one left with the most."""
    order = sorted(available)
    rng.shuffle(order)
    ranked: list[str] = []
    for need in needed:
        pick = next((c for c in order if available[c] >= need), None) or max(order, key=lambda c: available[c])
        order.remove(pick)
        ranked.append(pick)
    return ranked


def _pictures(pool: Path) -> dict[str, list[Path]]:
    """Concept -> its distinct pictures (hard links of one file counted once), sorted."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(pool.glob("*/*/*")):
        st = p.stat()
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out[p.parent.name].append(p)
    return dict(out)


def _near_duplicate(src: Path, kind: str, rng: random.Random) -> tuple[bytes, str]:
    """A near-duplicate of `src` as (file bytes, extension)."""
    with Image.open(src) as im:
        im.load()
        if kind == "reencode":
            buf = io.BytesIO()
            to_rgb(im, (255, 255, 255)).save(buf, "JPEG", quality=rng.randint(70, 90))
            return buf.getvalue(), ".jpg"
        if kind == "flip":
            out = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:  # crop: 70-90% of each side, anywhere in the picture
            w, h = im.size
            cw, ch = max(1, round(w * rng.uniform(0.7, 0.9))), max(1, round(h * rng.uniform(0.7, 0.9)))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            out = im.crop((x, y, x + cw, y + ch))
        buf = io.BytesIO()
        out.save(buf, "PNG")
        return buf.getvalue(), ".png"


def _small_enough(p: Path) -> bool:
    try:
        with Image.open(p) as im:
            return im.width * im.height <= MAX_DUP_PIXELS
    except Exception:  # not an image PIL reads (or a decompression bomb): never duplicated
        return False


def redraw_pool(tmp: Path, cfg: DemoPoolConfig, seed: int, summary: dict[str, Any]) -> None:
    """Replace `tmp/pool` (the plain pool) by its long-tail redraw; update `summary` and write FREQUENCIES."""
    rng = random.Random(seed + 7)  # its own stream: the plain build's draws stay as they are
    old, new = tmp / "pool", tmp / "pool.longtail"
    pictures = _pictures(old)
    counts = zipf_counts(len(pictures), cfg.long_tail_head, cfg.long_tail_exponent)
    dups = near_duplicate_counts(counts, cfg.long_tail_near_duplicates)
    ranked = assign_ranks({c: len(p) for c, p in pictures.items()}, [n - d for n, d in zip(counts, dups)], rng)
    concepts: dict[str, dict[str, Any]] = {}
    for rank, (concept, n, d) in enumerate(zip(ranked, counts, dups), start=1):
        picked = rng.sample(pictures[concept], min(n - d, len(pictures[concept])))
        for p in picked:
            dst = new / p.relative_to(old)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, dst)
        sources = [p for p in picked if _small_enough(p)]
        made, seen = 0, set()
        for j in range(d if sources else 0):
            src = rng.choice(sources)
            kind = NEAR_DUP_KINDS[j % len(NEAR_DUP_KINDS)]
            data, ext = _near_duplicate(src, kind, rng)
            if data in seen:  # a second flip (or same-quality re-encode) of one picture: an exact copy, a crop instead
                kind = "crop"
                data, ext = _near_duplicate(src, kind, rng)
            seen.add(data)
            dst = new / src.parent.relative_to(old) / f"nd{j:05d}-{kind}__{src.stem}{ext}"
            dst.write_bytes(data)
            made += 1
        concepts[concept] = {
            "rank": rank,
            "images": len(picked) + made,
            "distinct": len(picked),
            "near_duplicates": made,
        }
    shutil.rmtree(old)
    new.rename(old)
    for source in list(summary["pool"]):
        files = [p for p in (old / source).glob("*/*") if p.is_file()] if (old / source).is_dir() else []
        by_class: dict[str, int] = defaultdict(int)
        for p in files:
            by_class[p.parent.name] += 1
        summary["pool"][source] = {"total": len(files), "classes": dict(sorted(by_class.items()))}
    frequencies = {c: concepts[c]["images"] for c in ranked}
    summary["long_tail"] = {
        "exponent": cfg.long_tail_exponent,
        "head": cfg.long_tail_head,
        "near_duplicates": cfg.long_tail_near_duplicates,
        "images": sum(frequencies.values()),
        "concepts": concepts,
    }
    summary["concept_frequencies"] = frequencies
    atomic_write_json(tmp / FREQUENCIES, frequencies)
