"""Small real inputs for the benchmarks' `--smoke` mode (`make test` runs every benchmark that way, so a benchmark the
README cites cannot rot unnoticed). Needs the dev extras (scikit-image), like the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SMOKE_HELP = "tiny sizes that finish in seconds (what `make test` runs); the numbers mean nothing"


def sample_pool(root: Path, n: int = 48, seed: int = 0) -> Path:
    """`n` random crops of real photos (scikit-image's bundled set; crops, so near-duplicate removal keeps them) at
    random sizes 24-160 px and aspect ratios, as PNG and JPEG files in two class folders under `root`; returns `root`."""
    from skimage import data as skdata

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
    from amoe_core.config import Params
    from amoe_core.data.ingest import run

    out = root / "shards"
    params = Params().model_copy(deep=True)
    params.ingest.shard_size, params.ingest.workers = 16, 1
    run(params, sources=[f"folder:{sample_pool(root / 'pool', n)}"], out=out)
    return out
