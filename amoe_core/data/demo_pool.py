"""`amoe data demo-pool`: a pool of real images from three Debian packages, with no internet at run time.

Layout (demo_pool.out):
  pool/fashion_mnist/<class>/train_XXXXX.png      fashion-mnist train images (28x28 grey), the dominant source
  pool/openclipart/<category>/<file>.png          clip-art kept as the raw files (some are enormous)
  pool/tuxpaint/<category>/<file>.png             Tux Paint stamps: photo cut-outs and drawings with alpha
  splits/{fmnist_train,fmnist_test,clipart_train,clipart_test}/<class>/<file>.png   labelled, RGB, <= 256 px
  captions/tuxpaint.jsonl                         the pool stamps' English descriptions (data/demo_captions.py)
  segmentation/                                   cut-outs on backgrounds, VOC layout (data/demo_segmentation.py)
  summary.json                                    counts per source / split / class
  (demo_pool.long_tail: pool/ redrawn with a web-like long tail, see demo_longtail.py)
Clip-art and stamp sub-folders are flattened into the file name (`a/b.png` -> `a__b.png`) so that the label is
always the top-level category. Tux Paint SVG stamps are left out: 83 of the 248 duplicate a PNG stamp and rasterising
the rest needs cairo, which is not a dependency. The whole tree is built in a temporary directory and renamed into
place, so a finished pool is never half-written and re-running is a no-op.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import shutil
import subprocess
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from amoe_core.config.demo_pool import DemoPoolConfig
from amoe_core.data.decode import bound_side, to_rgb
from amoe_core.data.demo_captions import write_tuxpaint_captions
from amoe_core.data.demo_longtail import redraw_pool
from amoe_core.data.demo_segmentation import SEG_DIR, build_segmentation
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_write_json

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

PACKAGES = ("dataset-fashion-mnist", "openclipart-png", "tuxpaint-stamps-default")
FMNIST_DIR = "usr/share/datasets/fashion-mnist"
CLIPART_DIR = "usr/share/openclipart/png"
TUXPAINT_DIR = "usr/share/tuxpaint/stamps"
FMNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
SPLIT_SIDE = 256  # labelled splits are stored downscaled: evaluation runs at <= 112 px
SPLIT_MAX_PIXELS = 50_000_000  # larger clip-art would take seconds each to decode; it stays in the raw pool only
NO_APT_HELP = (
    "the demo pool needs Debian's apt-get and dpkg-deb; without them, point ingest at any image folder instead: "
    "amoe data ingest --source folder:/path/to/images (or set ingest.sources in params.yaml)"
)


def run(params: Params, **_: Any) -> dict[str, Any]:
    cfg = params.demo_pool
    out = Path(cfg.out)
    if (out / "summary.json").exists():
        log.info("demo pool %s exists; nothing to do (delete it to rebuild)", out)
        return _read_summary(out)
    if out.exists() and any(out.iterdir()):
        raise AmoeError(f"demo_pool.out = '{out}' exists but holds no summary.json; move it away or pick another out")
    if cfg.fmnist_pool + cfg.fmnist_teacher_train > 60000:
        raise AmoeError(
            f"demo_pool.fmnist_pool + fmnist_teacher_train = {cfg.fmnist_pool + cfg.fmnist_teacher_train}: "
            "fashion-mnist has 60000 train images; lower one of them"
        )
    debs = download_debs(Path(cfg.debs))
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extract = tmp / "extract"
    _extract_all(debs, extract)
    rng = random.Random(params.seed)
    summary: dict[str, Any] = {"pool": {}, "splits": {}, "skipped": {}, "notes": []}
    _fashion_mnist(extract / "dataset-fashion-mnist" / FMNIST_DIR, tmp, cfg, params.seed, summary)
    _clipart(extract / "openclipart-png" / CLIPART_DIR, tmp, cfg, rng, summary)
    stamps_src = extract / "tuxpaint-stamps-default" / TUXPAINT_DIR
    stamps = _tuxpaint(stamps_src, tmp, cfg.max_per_category, summary)
    summary["captions"] = {"tuxpaint": write_tuxpaint_captions(stamps, stamps_src, tmp)}
    if cfg.segmentation_train:
        summary["segmentation"] = build_segmentation(
            stamps_src, extract / "openclipart-png" / CLIPART_DIR, tmp / SEG_DIR, cfg.segmentation_train,
            cfg.segmentation_val, cfg.segmentation_side, params.seed,
        )  # fmt: skip
    if cfg.long_tail:
        redraw_pool(tmp, cfg, params.seed, summary)
    shutil.rmtree(extract)
    atomic_write_json(tmp / "summary.json", summary)
    if out.exists():
        out.rmdir()  # empty (checked above); rmdir, not rmtree: never deletes files that appeared meanwhile
    os.replace(tmp, out)
    log.info("demo pool: %s", {k: v["total"] for k, v in summary["pool"].items()})
    return summary


def _read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------------------- debs
def download_debs(debs: Path) -> dict[str, Path]:
    """`apt-get download` the packages not cached in `debs` yet (no install, no root needed beyond apt's lists)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = {p: sorted(debs.glob(f"{p}_*.deb")) for p in PACKAGES}
    missing = [p for p, f in found.items() if not f]
    if missing:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise AmoeError(f"cannot download {', '.join(missing)}: {NO_APT_HELP}")
        log.info("apt-get download %s into %s", " ".join(missing), debs)
        r = subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise AmoeError(
                f"apt-get download {' '.join(missing)} failed ({last}); run `apt-get update` once, or {NO_APT_HELP}"
            )
        found = {p: sorted(debs.glob(f"{p}_*.deb")) for p in PACKAGES}
    return {p: f[-1] for p, f in found.items()}


def _extract_all(debs: dict[str, Path], dest: Path) -> None:
    # The three extractions are independent (xz decompression bound): run them side by side.
    procs = []
    for pkg, deb in debs.items():
        (dest / pkg).mkdir(parents=True)
        procs.append((deb, subprocess.Popen(["dpkg-deb", "-x", str(deb), str(dest / pkg)], stderr=subprocess.PIPE)))
    for deb, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise AmoeError(
                f"dpkg-deb -x {deb} failed: {err.decode().strip()[:200]}; delete the file to re-download it"
            )


# ---------------------------------------------------------------------------------------------------------- sources
def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic (dtype, ndim), big-endian dims, then raw uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(src: Path, tmp: Path, cfg: DemoPoolConfig, seed: int, summary: dict) -> None:
    x, y = _idx(src / "train-images-idx3-ubyte.gz"), _idx(src / "train-labels-idx1-ubyte.gz")
    xt, yt = _idx(src / "t10k-images-idx3-ubyte.gz"), _idx(src / "t10k-labels-idx1-ubyte.gz")
    perm = np.random.default_rng(seed).permutation(len(x))
    pool_idx, teach_idx = perm[: cfg.fmnist_pool], perm[cfg.fmnist_pool : cfg.fmnist_pool + cfg.fmnist_teacher_train]
    test_idx = np.random.default_rng(seed + 1).permutation(len(xt))[: cfg.fmnist_test]
    for dest, images, labels, idx, prefix in (
        (tmp / "pool" / "fashion_mnist", x, y, pool_idx, "train"),
        (tmp / "splits" / "fmnist_train", x, y, teach_idx, "train"),
        (tmp / "splits" / "fmnist_test", xt, yt, test_idx, "test"),
    ):
        for c in FMNIST_CLASSES:
            (dest / c).mkdir(parents=True, exist_ok=True)
        for i in np.sort(idx):
            Image.fromarray(images[i]).save(
                dest / FMNIST_CLASSES[labels[i]] / f"{prefix}_{i:05d}.png", compress_level=1
            )
        counts = Counter(FMNIST_CLASSES[labels[i]] for i in idx)
        entry = {"total": len(idx), "classes": dict(sorted(counts.items()))}
        (summary["pool"] if dest.parent.name == "pool" else summary["splits"])[dest.name] = entry


def _flat_name(rel: Path) -> str:
    return "__".join(rel.parts[1:])  # drop the category, keep sub-folders in the name


def _clipart(src: Path, tmp: Path, cfg: DemoPoolConfig, rng: random.Random, summary: dict) -> None:
    # Some files are symlinks to others: group by the real file so a picture never lands in both splits.
    groups: dict[Path, list[Path]] = defaultdict(list)
    for p in sorted(src.rglob("*.png")):
        if p.resolve().is_file():
            groups[p.resolve()].append(p.relative_to(src))
    by_cat: dict[str, list[Path]] = defaultdict(list)
    for real, rels in groups.items():
        by_cat[min(rels).parts[0]].append(real)
    shuffled, fits = {}, {}
    for cat in sorted(by_cat):
        reals = sorted(by_cat[cat])
        rng.shuffle(reals)
        shuffled[cat] = reals[: cfg.max_per_category] if cfg.max_per_category else reals
        fits[cat] = [r for r in shuffled[cat] if _fits_split(r)]  # too large to decode: raw pool only
    labelled = balanced_categories({c: len(r) for c, r in fits.items()}, cfg)
    train_jobs, test_jobs, pool_files = [], [], []
    for cat, reals in shuffled.items():
        n_test, n_train = labelled.get(cat, (0, 0))
        test, train = set(fits[cat][:n_test]), set(fits[cat][n_test : n_test + n_train])
        for real in reals:
            name = _flat_name(min(groups[real]))
            if real in test:  # held out: never in the unlabelled pool
                test_jobs.append((real, tmp / "splits" / "clipart_test" / cat / name))
                continue
            if real in train:
                train_jobs.append((real, tmp / "splits" / "clipart_train" / cat / name))
            pool_files += [(real, tmp / "pool" / "openclipart" / r.parts[0] / _flat_name(r)) for r in groups[real]]
    for real, dst in pool_files:  # the raw files, duplicates (symlinked copies) included, as a crawl would have them
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(real, dst)
    summary["pool"]["openclipart"] = _count(dst for _, dst in pool_files)
    skipped = _write_split_images(train_jobs + test_jobs)
    summary["skipped"]["clipart_splits"] = {str(Path(k).relative_to(tmp)): v for k, v in sorted(skipped.items())}
    for split, jobs in (("clipart_train", train_jobs), ("clipart_test", test_jobs)):
        summary["splits"][split] = _count(dst for _, dst in jobs if str(dst) not in skipped)


def balanced_categories(counts: dict[str, int], cfg: DemoPoolConfig) -> dict[str, tuple[int, int]]:
    """Category -> (test, train) image counts of the labelled clip-art splits.

    openclipart is very unbalanced (computer 1796 pictures, buttons 3): with proportional splits a majority vote
    scores well above chance and random features look good. So only categories with at least
    `clipart_min_per_category` pictures (after `max_per_category`) that are not excluded are labelled, each holds out
    the same number for test (`clipart_test_per_category`, lowered to half the smallest kept category if that is
    smaller) and keeps at most `clipart_train_per_category` for train: chance is 1 / n_classes.
    """
    if cfg.max_per_category:
        counts = {c: min(n, cfg.max_per_category) for c, n in counts.items()}
    kept = {c: n for c, n in counts.items() if n >= cfg.clipart_min_per_category and c not in cfg.clipart_exclude}
    if len(kept) < 2:
        raise AmoeError(
            f"only {len(kept)} clip-art categories have >= demo_pool.clipart_min_per_category = "
            f"{cfg.clipart_min_per_category} pictures (largest: {max(counts.values(), default=0)}); lower it"
        )
    n_test = min(cfg.clipart_test_per_category, min(kept.values()) // 2)
    return {c: (n_test, min(cfg.clipart_train_per_category, n - n_test)) for c, n in kept.items()}


def _tuxpaint(src: Path, tmp: Path, max_per_category: int, summary: dict) -> list[tuple[Path, Path]]:
    """Stamps (PNG) into the pool; returns (source, pool copy) pairs: their descriptions become captions."""
    files = []
    taken: Counter[str] = Counter()
    for p in sorted(src.rglob("*.png")):
        rel = p.relative_to(src)
        if len(rel.parts) < 2 or (max_per_category and taken[rel.parts[0]] >= max_per_category):
            continue
        taken[rel.parts[0]] += 1
        dst = tmp / "pool" / "tuxpaint" / rel.parts[0] / _flat_name(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, dst)
        files.append((p, dst))
    summary["pool"]["tuxpaint"] = _count(dst for _, dst in files)
    summary["notes"].append(f"tuxpaint: {len(list(src.rglob('*.svg')))} SVG stamps left out (PNG only)")
    return files


def _count(paths) -> dict[str, Any]:
    counts = Counter(Path(p).parent.name for p in paths)
    return {"total": sum(counts.values()), "classes": dict(sorted(counts.items()))}


# ---------------------------------------------------------------------------------------------------------- splits
def _write_split_images(jobs: list[tuple[Path, Path]]) -> dict[str, str]:
    """Downscale to <= SPLIT_SIDE and store RGB on white, in parallel; returns {dst: reason} for skipped files."""
    for _, dst in jobs:
        dst.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        results = pool.map(_split_image, jobs, chunksize=64)
        return {str(dst): r for (_, dst), r in zip(jobs, results) if r}


def _fits_split(path: Path) -> bool:
    """Header only: can this picture be decoded for the splits (<= SPLIT_MAX_PIXELS, a readable image)?"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.width * im.height <= SPLIT_MAX_PIXELS
    except Exception:  # Image.DecompressionBombError (> 2x PIL's limit) or not an image
        return False


def _split_image(job: tuple[Path, Path]) -> str:
    src, dst = job
    Image.MAX_IMAGE_PIXELS = SPLIT_MAX_PIXELS
    try:
        with Image.open(src) as im:
            if im.width * im.height > SPLIT_MAX_PIXELS:
                return f"{im.width}x{im.height} exceeds {SPLIT_MAX_PIXELS} pixels"
            im.load()
            rgb = bound_side(to_rgb(im, (255, 255, 255)), SPLIT_SIDE)
        rgb.save(dst, compress_level=1)
        return ""
    except Exception as e:  # undecodable clip-art is skipped, not fatal
        return f"{type(e).__name__}: {e}"[:200]
