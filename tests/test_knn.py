"""kNN (DINO protocol): identical to a brute-force NumPy implementation; ~85% on fashion-mnist raw pixels."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from amoe_core.errors import AmoeError
from amoe_core.eval.knn import knn_accuracy, knn_predict
from amoe_core.eval.labels import LabelledFeatures

REPO = Path(__file__).resolve().parents[1]


def brute_force_knn(train, train_labels, test, ks, temperature, num_classes):
    """The same protocol written independently: float64, full similarity matrix, stable argsort, explicit loops."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = b.astype(np.float64) @ a.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")
    out = {}
    for k in ks:
        preds = np.empty(len(test), dtype=np.int64)
        for i in range(len(test)):
            votes = np.zeros(num_classes)
            for j in order[i, :k]:
                votes[train_labels[j]] += np.exp(sim[i, j] / temperature)
            preds[i] = int(np.argmax(votes))
        out[k] = preds
    return out


def test_knn_equals_brute_force_numpy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(7, 24))
    train_labels = rng.integers(0, 7, size=600)
    test_labels = rng.integers(0, 7, size=250)
    # Overlapping clusters so that k and the weighting matter (predictions are neither trivial nor random).
    train = (centres[train_labels] + 1.5 * rng.normal(size=(600, 24))).astype(np.float32)
    test = (centres[test_labels] + 1.5 * rng.normal(size=(250, 24))).astype(np.float32)
    ks = [1, 10, 20, 100]
    ours = knn_predict(train, train_labels, test, ks, temperature=0.07, num_classes=7)
    ref = brute_force_knn(train, train_labels, test, ks, 0.07, 7)
    for k in ks:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=f"k={k}")
    accs = {k: float((ours[k] == test_labels).mean()) for k in ks}
    assert 0.3 < accs[20] < 0.95, accs  # a meaningful regime: better than chance (1/7), not trivially separable
    assert len({tuple(ours[k]) for k in ks}) > 1  # k changes predictions, so the per-k prefixes are exercised


def test_temperature_changes_votes_like_the_reference() -> None:
    """With T large, votes are ~uniform counts; with T small, the nearest neighbour dominates (k-NN -> 1-NN)."""
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    test = rng.normal(size=(100, 8)).astype(np.float32)
    for t in (0.005, 0.07, 5.0):
        np.testing.assert_array_equal(
            knn_predict(train, labels, test, [15], t, 5)[15], brute_force_knn(train, labels, test, [15], t, 5)[15]
        )
    one_nn = knn_predict(train, labels, test, [1], 0.07, 5)[1]
    sharp = knn_predict(train, labels, test, [15], 0.001, 5)[15]
    np.testing.assert_array_equal(sharp, one_nn)


def test_knn_rejects_bad_input() -> None:
    x = np.ones((5, 4), np.float32)
    with pytest.raises(AmoeError, match="k = 10 needs at least 10 training images"):
        knn_predict(x, np.zeros(5), x, [10])
    with pytest.raises(AmoeError, match="same width"):
        knn_predict(x, np.zeros(5), np.ones((2, 3), np.float32), [1])
    with pytest.raises(AmoeError, match="5 training features but 4 labels"):
        knn_predict(x, np.zeros(4), x, [1])


# ---------------------------------------------------------------------------------------------------- fashion-mnist
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _from_splits(split: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((split / name).glob("*.png"))]
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(files))[:n]
    x = np.stack([np.asarray(Image.open(files[i][0]).convert("L"), dtype=np.uint8) for i in pick])
    return x.reshape(len(pick), -1), np.array([files[i][1] for i in pick])


@pytest.fixture(scope="session")
def fmnist_pixels(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10k train / 2k test fashion-mnist images as raw uint8 pixel rows (784) and labels.

    From the demo splits when `make demo` has written them, else straight from the cached Debian package's IDX files.
    """
    splits = REPO / "data/demo/splits"
    if (splits / "fmnist_train").is_dir() and (splits / "fmnist_test").is_dir():
        return (*_from_splits(splits / "fmnist_train", 10000), *_from_splits(splits / "fmnist_test", 2000))
    debs = sorted((REPO / "data/debs").glob("dataset-fashion-mnist_*.deb"))
    if not debs or shutil.which("dpkg-deb") is None:
        pytest.skip("fashion-mnist unavailable: run `make demo` (or `amoe data demo-pool`) to cache the .deb first")
    root = tmp_path_factory.mktemp("fmnist")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    d = root / "usr/share/datasets/fashion-mnist"
    rng = np.random.default_rng(0)
    xtr, ytr = _read_idx(d / "train-images-idx3-ubyte.gz"), _read_idx(d / "train-labels-idx1-ubyte.gz")
    xte, yte = _read_idx(d / "t10k-images-idx3-ubyte.gz"), _read_idx(d / "t10k-labels-idx1-ubyte.gz")
    tr, te = rng.permutation(len(xtr))[:10000], rng.permutation(len(xte))[:2000]
    return xtr[tr].reshape(-1, 784), ytr[tr].astype(np.int64), xte[te].reshape(-1, 784), yte[te].astype(np.int64)


def test_knn_on_fashion_mnist_pixels_is_near_the_published_baseline(fmnist_pixels) -> None:
    """Published kNN baselines on raw fashion-mnist pixels are ~84-86% (zalandoresearch benchmark, full 60k train);
    with 10k training images the DINO-weighted vote lands a little lower but in the same neighbourhood."""
    xtr, ytr, xte, yte = fmnist_pixels
    acc = knn_accuracy(LabelledFeatures(xtr.astype(np.float32), ytr, xte.astype(np.float32), yte), ks=[10, 20, 100])
    assert 0.78 <= acc[20] <= 0.90, acc
    assert acc[100] < acc[10] + 0.02, acc  # more, farther neighbours never help much on pixels


def test_entropy_fused_votes_equal_a_hand_computation():
    """The released SigLino protocol on a tiny example, worked out with plain floats."""
    import math

    from amoe_core.eval.knn import entropy_fused_votes, knn_ensemble_accuracy

    # space A: the query's 2 nearest are both class 0 (cos 1.0 and 0.8); space B: class 1 (cos 1.0), class 0 (0.6)
    train_a = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [0.0, -1.0]])
    train_b = np.array([[0.6, 0.8], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = np.array([0, 0, 1, 1])
    t, beta = 0.5, 5.0
    va = [math.exp(1.0 / t) + math.exp(0.8 / t), 0.0]  # class 0, class 1
    vb = [math.exp(0.6 / t), math.exp(1.0 / t)]

    def entropy(v):
        p = [max(x / sum(v), 1e-8) for x in v]
        return -sum(x * math.log(x) for x in p)

    ha, hb = entropy(va), entropy(vb)
    wa = math.exp(-beta * ha) / (math.exp(-beta * ha) + math.exp(-beta * hb))
    fused = [wa * a + (1 - wa) * b for a, b in zip(va, vb)]
    got = entropy_fused_votes([np.array([va]), np.array([vb])], beta)
    np.testing.assert_allclose(got[0], fused, rtol=1e-12)  # both float64
    assert fused[0] > fused[1] and vb[1] > vb[0]  # A is certain (entropy ~0), so it outweighs B, which votes 1
    acc = knn_ensemble_accuracy([train_a, train_b], labels, [np.array([[1.0, 0.0]])] * 2, np.array([0]), ks=[2],
                                temperature=t, beta=beta)  # fmt: skip
    assert acc == {2: 1.0}
    data = LabelledFeatures(train_b, labels, np.array([[1.0, 0.0]]), np.array([0]))
    assert knn_accuracy(data, ks=[2], temperature=t) == {2: 0.0}
