"""Hierarchical k-means with resampling on Gaussian mixtures with Zipf-distributed cluster sizes."""

from __future__ import annotations

import numpy as np
import pytest

from amoe_core.curation.hkmeans import check_levels, hierarchical_kmeans, point_paths
from amoe_core.curation.kmeans import assign, hash_scores, per_cluster_pick, pick_lowest
from amoe_core.errors import AmoeError

KS = [300, 60, 15]


def zipf_mixture(
    n_clusters: int = 200, total: int = 20000, dim: int = 16, a: float = 1.3, seed: int = 0, noise: float = 0.5
):
    """Well-separated Gaussian clusters whose sizes follow a Zipf law (a few huge concepts, a long tail of tiny
    ones, as in web data). Returns (x float32 [n, dim], true cluster id [n])."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_clusters + 1) ** a
    sizes = np.maximum(np.round(w / w.sum() * total).astype(int), 4)
    centers = rng.normal(size=(n_clusters, dim)) * 4
    y = np.repeat(np.arange(n_clusters), sizes)
    x = (centers[y] + rng.normal(size=(len(y), dim)) * noise).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def mixture():
    return zipf_mixture()


@pytest.fixture(scope="module", params=["cosine", "l2"])
def levels(request, mixture):
    x, _ = mixture
    return request.param, hierarchical_kmeans(x, KS, 10, [2, 4, 4], [3, 3, 2], "closest", request.param, seed=0)


def test_objective_decreases(levels) -> None:
    _, lv = levels
    for level in lv:
        obj = np.asarray(level.objective)
        assert 1 <= len(obj) <= 10  # faiss stops early once converged
        assert np.all(np.diff(obj) <= 1e-6 * obj[0]), obj  # Lloyd iterations never increase the distortion
        assert obj[-1] < obj[0]
        assert len(level.resample_objective) in (1, 3)


def test_every_item_assigned_to_its_nearest_centroid_at_every_level(levels, mixture) -> None:
    metric, lv = levels
    items = mixture[0]
    for k, level in zip(KS, lv):
        assert level.centroids.shape == (k, items.shape[1]) and level.assignment.shape == (len(items),)
        assert level.assignment.min() >= 0 and level.assignment.max() < k
        # brute-force reference in float64 numpy
        a, c = items.astype(np.float64), level.centroids.astype(np.float64)
        if metric == "cosine":
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            ref = np.argmax(a @ c.T, axis=1)
        else:
            ref = np.argmin((c**2).sum(1)[None] - 2 * a @ c.T, axis=1)  # ||a||^2 is the same for every centroid
        assert (level.assignment == ref).mean() > 0.999  # ties/rounding aside
        items = level.centroids
    paths = point_paths([level.assignment for level in lv])
    assert paths.shape == (len(mixture[0]), 3)
    assert np.array_equal(paths[:, 2], lv[2].assignment[lv[1].assignment[lv[0].assignment]])


def test_resampling_is_deterministic_and_changes_centroids(mixture) -> None:
    x = mixture[0][::4]
    a = hierarchical_kmeans(x, [100], 5, [3], [3], "closest", "cosine", seed=3)
    b = hierarchical_kmeans(x, [100], 5, [3], [3], "closest", "cosine", seed=3)
    c = hierarchical_kmeans(x, [100], 5, [1], [3], "closest", "cosine", seed=3)
    d = hierarchical_kmeans(x, [100], 5, [3], [1], "closest", "cosine", seed=3)  # sample_size 1: no resampling
    assert np.array_equal(a[0].assignment, b[0].assignment)
    assert np.array_equal(a[0].centroids, b[0].centroids)
    assert not np.array_equal(a[0].centroids, c[0].centroids)
    assert np.array_equal(c[0].centroids, d[0].centroids) and d[0].resample_objective == []


def test_chunked_assignment_from_float16_memmap_matches_one_pass(tmp_path, mixture) -> None:
    x, _ = mixture
    path = tmp_path / "emb.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=x.shape)
    mm[:] = x
    mm.flush()
    centroids = x[:50] / np.linalg.norm(x[:50], axis=1, keepdims=True)
    l1, d1 = assign(np.load(path, mmap_mode="r"), centroids, "cosine", chunk_size=777)
    l2, d2 = assign(x.astype(np.float16), centroids, "cosine", chunk_size=10**6)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-6)


def test_per_cluster_pick_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 200)
    scores = rng.random(200)
    quota = rng.integers(0, 6, 7)
    ref = sorted(i for c in range(7) for i in sorted(np.flatnonzero(labels == c), key=lambda i: scores[i])[: quota[c]])
    assert per_cluster_pick(labels, scores, quota, 7).tolist() == ref


def test_k_larger_than_the_items_of_a_level() -> None:
    with pytest.raises(AmoeError, match=r"cluster.k\[0\] = 50 but level 1 has only 40 embedded images"):
        check_levels(40, [50, 10])
    with pytest.raises(AmoeError, match=r"cluster.k\[1\] = 20 but level 2 has only 10 level-1 centroids"):
        check_levels(40, [10, 20])


# ------------------------------------------------------------------------------------------------------ resampling
def level1_clusters_per_component(assignment: np.ndarray, y: np.ndarray, n_components: int) -> np.ndarray:
    """How many level-1 clusters each true component holds (a cluster belongs to the component of most of its
    points)."""
    k = int(assignment.max()) + 1
    table = np.zeros((k, n_components), dtype=np.int64)
    np.add.at(table, (assignment, y), 1)
    owners = table[table.sum(1) > 0].argmax(1)
    return np.bincount(owners, minlength=n_components)


def test_resampling_spreads_level1_clusters_over_components() -> None:
    """Vo et al.'s claim on a Zipf mixture: after resampling, the number of level-1 clusters per concept grows
    much more slowly with the concept's size than k-means' density-following allocation.

    Measured on data seeds 0-7 at OMP_NUM_THREADS=1 and 2 (identical at both): log-log slope of clusters per
    component vs component size 0.74-0.91 without resampling, 0.46-0.59 with 5 resampling steps; the biggest
    component's share of the level-1 clusters 0.16-0.23 -> 0.04-0.10. The test averages 3 data seeds (mean slope
    0.46-0.53 over any 3 of them) so a machine whose float rounding sends one run elsewhere still passes."""
    slopes, shares = {1: [], 6: []}, {1: [], 6: []}
    for seed in range(3):
        x, y = zipf_mixture(n_clusters=30, total=20000, dim=32, a=1.0, seed=seed, noise=1.0)
        sizes = np.bincount(y)
        for steps in (1, 6):  # step 0 only, or step 0 + 5 resampling steps
            levels = hierarchical_kmeans(x, [400, 40, 8], 20, [steps] * 3, [25, 5, 2], "closest", "l2", seed=seed)
            counts = level1_clusters_per_component(levels[0].assignment, y, 30)
            assert counts.min() >= 1, counts  # every concept keeps at least one cluster
            slopes[steps].append(np.polyfit(np.log(sizes), np.log(counts), 1)[0])
            shares[steps].append(counts[sizes.argmax()] / counts.sum())
    plain, resampled = np.mean(slopes[1]), np.mean(slopes[6])
    assert resampled <= 0.6, slopes  # the bound; measured means 0.46-0.53
    assert plain - resampled >= 0.2, slopes  # measured gap 0.28-0.40 per seed
    assert np.mean(shares[6]) <= 0.6 * np.mean(shares[1]), shares  # measured ratio 0.3-0.5


def test_random_scores_depend_on_the_item_only() -> None:
    index = np.arange(100_000)
    scores = hash_scores(index, seed=4)
    np.testing.assert_array_equal(scores[70_000:], hash_scores(index[70_000:], seed=4))  # any split over ranks
    assert not np.array_equal(scores, hash_scores(index, seed=5))
    # uniform on [0, 1): decile counts of 100k draws stay within 5 standard deviations (sd = 95) of 10k
    assert scores.min() >= 0 and scores.max() < 1
    assert np.abs(np.bincount((scores * 10).astype(int), minlength=10) - 10_000).max() < 5 * 95


def test_pick_lowest_on_one_process_is_per_cluster_pick() -> None:
    rng = np.random.default_rng(2)
    labels, scores = rng.integers(0, 9, 500), rng.random(500)
    offset = 1000  # a rank's slice starts anywhere: indices are global
    expected = per_cluster_pick(labels, scores, 4, 9) + offset
    np.testing.assert_array_equal(pick_lowest(labels, scores, np.arange(500) + offset, 4, 9), expected)


# ------------------------------------------------------------------------------------------------------ reference
# Concepts that are the majority of no level-1 cluster, on zipf_mixture(n_clusters=100, total=20000, dim=64, a=1.0,
# seed=s, noise=3.0) for s = 0, 1, 2, level-1 k 200, no resampling, in facebookresearch/ssl-data-curation (commit of
# 2026-11-30): its src/ run once on CPU, outside this repository, as `hierarchical_kmeans_with_resampling(
# torch.tensor(x, dtype=torch.float64), [200], 1, [1])` after `np.random.seed(s)` (its defaults: greedy k-means++,
# l2, 50 iterations, all points; numpy 2 needed its `np.Inf` spelled `np.inf`). Before this platform seeded greedily
# with l2 and 50 iterations on all points it lost 2 / 6 / 2 (cosine, 20 iterations) or 5 / 6 / 6 (l2, 50).
REFERENCE_LOST = [0, 2, 0]


def test_small_concepts_are_kept_as_well_as_the_reference() -> None:
    lost = []
    for seed in range(3):
        x, y = zipf_mixture(n_clusters=100, total=20000, dim=64, a=1.0, seed=seed, noise=3.0)
        (level,) = hierarchical_kmeans(x, [200], 50, [1], [1], "closest", "l2", seed=seed)
        lost.append(int((level1_clusters_per_component(level.assignment, y, 100) == 0).sum()))
    # summed over the 3 data seeds: a single run may lose one borderline concept more or less with another CPU's
    # float rounding (measured here: 1 / 0 / 0)
    assert sum(lost) <= sum(REFERENCE_LOST) + 1, (lost, REFERENCE_LOST)


def test_greedy_seeding_lowers_the_potential_of_plain_kmeanspp() -> None:
    """Greedy k-means++ keeps, among 2 + ln k candidates, the one that lowers the potential most: its seeds leave a
    lower potential than plain k-means++ (one candidate) on the same data (measured: ~0.85x on every seed)."""
    from amoe_core.curation.kmeans import kmeans_pp

    x, _ = zipf_mixture(n_clusters=100, total=5000, dim=32, a=1.0, seed=0, noise=3.0)
    potential = {}
    for trials in (1, None):
        pots = []
        for seed in range(3):
            c = kmeans_pp(x, 100, "l2", seed, trials=trials)
            pots.append(float(assign(x, c, "l2")[1].sum(dtype=np.float64)))
        potential[trials] = np.mean(pots)
    assert potential[None] < 0.95 * potential[1], potential
