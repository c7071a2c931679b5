"""Small real inputs for the benchmarks' `--smoke` mode (`make test` runs every benchmark that way, so a benchmark the
README cites cannot rot unnoticed). Needs the dev extras (scikit-image), like the tests."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SMOKE_HELP = "tiny sizes that finish in seconds (what `make test` runs); the numbers mean nothing"


def parse_and_compare(
    ap: argparse.ArgumentParser,
    compare: Callable[[argparse.Namespace], None],
    smoke: Callable[[argparse.Namespace, Path], None],
    inputs: str,
) -> None:
    """Add `--smoke` (its help names the sample `inputs` it uses), parse the command line and run `compare(args)`;
    with `--smoke`, `smoke(args, tmp)` first sets tiny sizes and writes sample inputs under a temporary folder."""
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP} ({inputs})")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            smoke(args, Path(tmp))
        compare(args)


def sample_pool(root: Path, n: int = 48, seed: int = 0) -> Path:
    """`n` random crops of real photos (scikit-image's bundled set; crops, so near-duplicate removal keeps them) at
    random sizes 24-160 px and aspect ratios, as PNG and JPEG files in two class folders under `root`; returns `root`."""
    from skimage import data as skdata  # optional dependency: the dev extras; only --smoke needs it

    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.camera()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(24, 161, size=2))
        photo = photos[i % len(photos)]
        ch, cw = (int(rng.integers(s // 8, s // 3)) for s in photo.shape[:2])
        y, x = int(rng.integers(0, photo.shape[0] - ch)), int(rng.integers(0, photo.shape[1] - cw))
        img = Image.fromarray(photo[y : y + ch, x : x + cw]).convert("RGB").resize((w, h))
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"img{i:04d}.{'png' if i % 3 else 'jpg'}")
    return root


def sample_shards(root: Path, n: int = 48) -> Path:
    """The sample pool ingested into WebDataset shards + manifest with the real ingest; returns the shards folder."""
    # gpu.py imports this module before it puts the checkout on sys.path; only sample_shards needs amoe_core
    from amoe_core.config import Params
    from amoe_core.data.ingest import run

    out = root / "shards"
    params = Params().model_copy(deep=True)
    params.ingest.shard_size, params.ingest.workers = 16, 1
    run(params, sources=[f"folder:{sample_pool(root / 'pool', n)}"], out=out)
    return out
