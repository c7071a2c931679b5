"""demo_pool.long_tail: the pool redrawn with Zipf concept frequencies and near-duplicates, and whether balanced
selection gives the tail its share on it (amoe_core/data/demo_longtail.py, amoe_core/curation/concepts.py)."""

from __future__ import annotations

import json
import shutil
import statistics

import numpy as np
import pandas as pd
import pytest
from conftest import small_params
from PIL import Image

from amoe_core.config import DemoPoolConfig
from amoe_core.curation.concepts import clusters_per_concept, concept_report, head_and_tail, log_slope
from amoe_core.curation.hkmeans import hierarchical_kmeans, point_paths
from amoe_core.curation.sampling import balanced_sample, random_sample
from amoe_core.data.decode import to_rgb
from amoe_core.data.demo_longtail import FREQUENCIES, assign_ranks, redraw_pool, zipf_counts
from amoe_core.data.ingest import run as ingest

HEAD = 120


@pytest.fixture(scope="module")
def long_tail(demo_pool_small, tmp_path_factory):
    """The small demo pool (20 fashion-mnist images per class, <= 8 clip-art / stamps per category) redrawn."""
    tmp = tmp_path_factory.mktemp("longtail")
    shutil.copytree(demo_pool_small / "pool", tmp / "pool")
    summary = json.loads((demo_pool_small / "summary.json").read_text())
    redraw_pool(tmp, DemoPoolConfig(long_tail=True, long_tail_head=HEAD), 0, summary)
    return tmp, summary


def _files(d):
    return sorted(p for p in d.glob("*/*/*") if p.is_file())


def test_zipf_counts_and_rank_assignment():
    assert zipf_counts(4, 120, 1.0) == [120, 60, 40, 30]
    assert zipf_counts(3, 100, 2.0) == [100, 25, 11]
    # a rank goes to a concept with enough pictures when one is left, else to the largest left
    import random

    ranked = assign_ranks({"a": 5, "b": 50, "c": 1}, [40, 4, 3], random.Random(0))
    assert ranked[0] == "b" and ranked[1] == "a" and ranked[2] == "c"


def test_long_tail_pool_frequencies_and_disjoint_splits(long_tail, demo_pool_small):
    tmp, summary = long_tail
    lt = summary["long_tail"]
    on_disk = pd.Series([p.parent.name for p in _files(tmp / "pool")]).value_counts().to_dict()
    assert on_disk == summary["concept_frequencies"] == json.loads((tmp / FREQUENCIES).read_text())
    assert sum(on_disk.values()) == lt["images"] == sum(v["total"] for v in summary["pool"].values())
    ranks = sorted(lt["concepts"].items(), key=lambda kv: kv[1]["rank"])
    head = ranks[0][1]
    # rank 1 holds `head` images, half of them near-duplicates (long_tail_near_duplicates = 0.5) when its
    # pictures suffice, else all its pictures plus those near-duplicates
    assert head["images"] == head["distinct"] + head["near_duplicates"] and head["near_duplicates"] == HEAD // 2
    # every concept holds its Zipf count or, short of pictures, all it has: the counts decrease along the ranks
    zipf = zipf_counts(len(ranks), HEAD, 1.0)
    for (name, c), n in zip(ranks, zipf):
        pictures = len({p.stat().st_ino for p in demo_pool_small.glob(f"pool/*/{name}/*")})
        assert c["images"] <= n and (c["images"] == n or c["distinct"] == pictures), (name, c, n, pictures)
    assert ranks[-1][1]["images"] < head["images"] / 10  # a long tail: the last concept < a tenth of the head
    # the labelled test splits are untouched and disjoint from the pool (near-duplicates are named after a pool picture)
    stems = {p.name.split("__", 1)[-1].rsplit(".", 1)[0] for p in _files(tmp / "pool")}
    for split in ("clipart_test", "fmnist_test"):
        test = {p.stem for p in (demo_pool_small / "splits" / split).rglob("*.png")}
        assert test and not test & stems


def test_near_duplicates_against_ingest_dedup(long_tail, tmp_path):
    """What `ingest` keeps of the near-duplicates: fashion-mnist (28 px, exact dedup only) keeps every one; for
    clip-art / stamps (pHash within 4) mirror images and crops mostly survive, JPEG re-encodes mostly do not:
    what a web pool holds after near-dedup."""
    tmp, summary = long_tail
    report = ingest(small_params(), sources=[f"folder:{tmp / 'pool'}"], out=tmp_path / "shards")
    dropped = {d["path"] for g in report["duplicates"]["groups"] for d in g["dropped"]}
    made = [p for p in _files(tmp / "pool") if p.name.startswith("nd")]
    assert made
    kept: dict[tuple[str, str], list[bool]] = {}
    for p in made:
        kind = p.name.split("-", 1)[1].split("__", 1)[0]
        small = p.parts[-3] == "fashion_mnist"
        kept.setdefault(("fmnist" if small else "drawn", kind), []).append(str(p) not in dropped)
    for (domain, kind), survived in sorted(kept.items()):
        if domain == "fmnist":
            assert all(survived), (kind, survived)
    drawn = {k: statistics.fmean(v) for (d, k), v in kept.items() if d == "drawn"}
    if drawn:  # measured on this pool: flips survive more often than re-encodes, which pHash catches
        assert drawn.get("flip", 1.0) >= drawn.get("reencode", 0.0), drawn


def _pixels(p) -> np.ndarray:
    with Image.open(p) as im:
        im.load()
        g = to_rgb(im, (255, 255, 255)).convert("L").resize((16, 16))
    h = np.histogram(np.asarray(g), bins=8, range=(0, 255))[0].astype(np.float32)
    return np.concatenate([np.asarray(g.resize((8, 8)), np.float32).ravel() / 255, 4 * h / h.sum()])


def test_balanced_selection_gives_the_tail_its_share(long_tail):
    """Balanced (hierarchical k-means + water-filling) vs random selections of 40% of the long-tail pool, 5 seeds.

    The embedding stands in for a teacher that separates concepts: a one-hot concept code (weight 3) beside coarse
    pixels (8x8 grey, grey histogram). Pixels alone do not separate these concepts (measured: tail-share gain
    -0.03 on average over 5 seeds, head share up as often as down), so they would test the features, not curation.
    Measured with these settings: tail-half share gain 0.02 to 0.11 per seed (mean 0.06), head share lower by 0.08
    to 0.15 in every seed. The margin below is half the measured mean, for k-means' summation-order differences
    across BLAS builds; the head must drop in every seed."""
    tmp, _ = long_tail
    files = _files(tmp / "pool")
    labels = pd.Series([p.parent.name for p in files])
    codes = pd.factorize(labels)[0]
    x = np.concatenate([3 * np.eye(codes.max() + 1, dtype=np.float32)[codes], np.stack([_pixels(p) for p in files])], 1)
    gains, drops = [], []
    for seed in range(5):
        levels = hierarchical_kmeans(x, [60, 15], 20, [4, 4], [3, 3], "closest", "l2", seed=seed)
        paths = point_paths([lv.assignment for lv in levels])
        target = len(x) * 4 // 10
        sel = {"balanced": balanced_sample(paths, target, seed), "random": random_sample(len(x), target, seed)}
        rep = concept_report(labels, paths[:, 0], sel)
        gains.append(rep["tail_half_share"]["balanced"] - rep["tail_half_share"]["random"])
        drops.append(rep["head_share"]["random"] - rep["head_share"]["balanced"])
        assert rep["head_share"]["pool"] > 1 / rep["concepts"] > rep["tail_half_share"]["pool"] / len(rep["tail_half"])
    assert statistics.fmean(gains) > 0.03, gains
    assert min(drops) > 0, drops


def test_concept_metrics_against_hand_counts():
    labels = pd.Series(["a"] * 6 + ["b"] * 3 + ["c"] * 2 + ["d"])
    assert head_and_tail(labels) == ("a", ["c", "d"])
    # clusters: 0,1,2 all a; 3 = b b + a (b owns it); 4 = c c d (c owns it)
    level1 = np.array([0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4, 4])
    owned = clusters_per_concept(labels, level1)
    assert owned == {"a": 3, "b": 1, "c": 1, "d": 0}
    # slope over a (6 images, 3 clusters), b (3, 1), c (2, 1): least squares on the logs, computed by hand
    x, y = np.log([6, 3, 2]), np.log([3, 1, 1])
    expected = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert log_slope({"a": 6, "b": 3, "c": 2, "d": 1}, owned) == pytest.approx(expected, rel=1e-9)  # float64 only
    rep = concept_report(labels, level1, {"sel": np.array([0, 6, 9, 11])})
    assert rep["head_share"] == {"pool": 0.5, "sel": 0.25} and rep["tail_half_share"] == {"pool": 0.25, "sel": 0.5}
