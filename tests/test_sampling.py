"""Hierarchical balanced sampling: water-filling against brute force, exact size, determinism, concept coverage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_hkmeans import zipf_mixture

from amoe_core.curation.hkmeans import hierarchical_kmeans, point_paths
from amoe_core.curation.sampling import balanced_sample, random_sample, water_fill
from amoe_core.errors import AmoeError


def brute_force_allocation(sizes: list[int], target: int) -> int:
    """Smallest sum of squared counts over every allocation 0 <= n_i <= s_i with sum n_i = target."""
    best = None
    for counts in itertools.product(*[range(s + 1) for s in sizes]):
        if sum(counts) == target:
            sq = sum(c * c for c in counts)
            best = sq if best is None else min(best, sq)
    return best


def test_water_fill_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 7, rng.integers(1, 5)).tolist()
        target = int(rng.integers(0, sum(sizes) + 1))
        counts = water_fill(np.array(sizes), target, rng)
        assert counts.sum() == target and np.all(counts >= 0) and np.all(counts <= sizes)
        assert int((counts**2).sum()) == brute_force_allocation(sizes, target), (sizes, target, counts)
    # the cut: whole small clusters, capped large ones
    assert water_fill(np.array([1, 2, 50, 100]), 23).tolist() == [1, 2, 10, 10]
    assert water_fill(np.array([3, 4]), 100).tolist() == [3, 4]


@pytest.fixture(scope="module")
def clustered():
    x, y = zipf_mixture()
    levels = hierarchical_kmeans(x, [300, 60, 15], 10, [2, 4, 4], [3, 3, 2], "closest", "cosine", seed=0)
    return y, point_paths([lv.assignment for lv in levels])


def test_exact_size_and_deterministic(clustered) -> None:
    _, paths = clustered
    a = balanced_sample(paths, 1234, seed=5)
    assert len(a) == 1234 and len(np.unique(a)) == 1234
    assert np.array_equal(a, balanced_sample(paths, 1234, seed=5))
    assert not np.array_equal(a, balanced_sample(paths, 1234, seed=6))
    r = random_sample(len(paths), 1234, seed=5)
    assert len(np.unique(r)) == 1234 and np.array_equal(r, random_sample(len(paths), 1234, seed=5))
    assert len(balanced_sample(paths, len(paths))) == len(paths)
    with pytest.raises(AmoeError, match="exceeds"):
        balanced_sample(paths, len(paths) + 1)


def test_top_level_split_is_water_filling(clustered) -> None:
    _, paths = clustered
    idx = balanced_sample(paths, 2000, seed=0)
    top = paths[:, 2]
    sizes = np.bincount(top, minlength=15)
    got = np.bincount(top[idx], minlength=15)
    cut_counts = np.sort(water_fill(sizes, 2000))
    assert np.array_equal(np.sort(got), cut_counts)  # the remainder's tie-break is random, the multiset is fixed
    assert np.all(got <= sizes)
    # one level down, inside every top cluster, the children are water-filled too
    for t in range(15):
        inside = paths[:, 2] == t
        child_sizes = np.bincount(paths[inside, 1], minlength=60)
        child_got = np.bincount(paths[idx][paths[idx, 2] == t, 1], minlength=60)
        assert np.array_equal(np.sort(child_got), np.sort(water_fill(child_sizes, got[t])))


def test_covers_the_long_tail_where_random_does_not(clustered) -> None:
    """Balanced sampling of 10% of a Zipf pool keeps almost every concept; random sampling loses the tail.

    Measured over data seeds 0-5 x sampling seeds 0-2, at OMP_NUM_THREADS=1 and 2: balanced covers 198-200 of the
    200 concepts, random 153-160. Before resampling restarted k-means from k-means++ (issue 20) the clusters
    followed density and balanced covered as few as 177 on an AMD machine (issue 13); the bounds leave room for
    another machine's rounding."""
    y, paths = clustered
    n_true = len(np.unique(y))
    budget = len(y) // 10
    balanced = len(np.unique(y[balanced_sample(paths, budget, seed=0)]))
    random = len(np.unique(y[random_sample(len(y), budget, seed=0)]))
    assert balanced >= 0.95 * n_true, (balanced, n_true)  # 190: 8 below the lowest measured
    assert random <= 0.85 * n_true and balanced - random >= 0.15 * n_true, (balanced, random, n_true)  # 170, 30


def test_closest_within_takes_the_points_nearest_their_centroid() -> None:
    paths = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [1, 0]])
    dist = np.array([0.5, 0.1, 0.3, 0.9, 0.2, 0.4])
    assert balanced_sample(paths, 4, within="closest", dist=dist).tolist() == [1, 2, 4, 5]
