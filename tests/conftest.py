"""Shared session fixtures: the cached demo .debs, a small demo pool, and a small shard set ingested from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from amoe_core.config import Params, validate_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_debs() -> Path:
    """The .deb cache shared with `make demo` (<repo>/data/debs), downloaded once when missing."""
    from amoe_core.data.demo_pool import download_debs

    debs = REPO / "data" / "debs"
    download_debs(debs)
    return debs


@pytest.fixture(scope="session")
def demo_pool_small(tmp_path_factory, demo_debs) -> Path:
    """A demo pool with reduced counts (a few images per class/category); returns demo_pool.out."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    params = small_params(demo_pool={"out": str(out), "debs": str(demo_debs)})
    from amoe_core.data.demo_pool import run

    run(params)
    return out


@pytest.fixture(scope="session")
def shards_small(tmp_path_factory, demo_pool_small) -> Path:
    """A shard set (a few hundred images) ingested from the small demo pool; returns the shards directory."""
    from amoe_core.data.ingest import run

    out = tmp_path_factory.mktemp("shards") / "shards"
    run(small_params(), sources=[f"folder:{demo_pool_small / 'pool'}"], out=out)
    return out


def small_params(**sections) -> Params:
    """Params with the small demo-pool counts, plus any section overrides ({"ingest": {"shard_size": 50}})."""
    data = {
        "demo_pool": {
            "fmnist_pool": 200,
            "fmnist_teacher_train": 200,
            "fmnist_test": 100,
            "max_per_category": 8,
            "clipart_min_per_category": 4,
            "segmentation_train": 8,
            "segmentation_val": 4,
        },
        "ingest": {"shard_size": 100, "chunk_size": 64, "workers": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return validate_params(data)
