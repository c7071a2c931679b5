"""Linear probe: perfect on linearly separable data, far above chance on fashion-mnist pixels, lr chosen on val."""

from __future__ import annotations

import numpy as np
import pytest
from test_knn import fmnist_pixels  # noqa: F401  (session fixture shared with the kNN test)

from amoe_core.errors import AmoeError
from amoe_core.eval.labels import LabelledFeatures
from amoe_core.eval.linear_probe import linear_probe, stratified_split


def _separable(n: int, rng: np.random.Generator, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points labelled by argmax of a random linear map, keeping only those with a clear margin."""
    x = rng.normal(size=(4 * n, w.shape[0])) * rng.uniform(0.1, 10, size=w.shape[0])  # uneven feature scales
    scores = x @ w
    top2 = np.sort(scores, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > scores.std()
    return x[keep][:n].astype(np.float32), scores[keep][:n].argmax(axis=1)


def test_probe_separates_linearly_separable_data_perfectly() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 4))
    xtr, ytr = _separable(800, rng, w)
    xte, yte = _separable(400, rng, w)
    res = linear_probe(
        LabelledFeatures(xtr, ytr, xte, yte), lrs=[0.1, 0.01], epochs=20, val_fraction=0.1, batch_size=32
    )
    assert res.test_accuracy == 1.0, res
    assert set(res.val_accuracy) == {0.1, 0.01}


def test_learning_rate_is_chosen_on_validation() -> None:
    """A rate too small to move the weights loses on validation; the grid picks the working one wherever it is."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 3))
    xtr, ytr = _separable(600, rng, w)
    xte, yte = _separable(200, rng, w)
    res = linear_probe(LabelledFeatures(xtr, ytr, xte, yte), lrs=[1e-7, 0.05], epochs=10)
    assert res.best_lr == 0.05
    assert res.val_accuracy[0.05] > res.val_accuracy[1e-7] + 0.2


def test_stratified_split_covers_every_class_without_overlap() -> None:
    labels = np.repeat(np.arange(5), [50, 20, 10, 2, 1])
    tr, va = stratified_split(labels, 0.1, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert [int((labels[va] == c).sum()) for c in range(5)] == [5, 2, 1, 1, 0]
    assert set(labels[tr]) == set(range(5))  # every class keeps training images


def test_probe_rejects_single_class_and_empty_grid() -> None:
    x = np.ones((10, 3), np.float32)
    with pytest.raises(AmoeError, match="fewer than two classes"):
        linear_probe(LabelledFeatures(x, np.zeros(10), x, np.zeros(10)))
    with pytest.raises(AmoeError, match="probe_lrs is empty"):
        linear_probe(LabelledFeatures(x, np.arange(10) % 2, x, np.arange(10) % 2), lrs=[])


def test_probe_on_fashion_mnist_pixels_beats_chance_widely(fmnist_pixels) -> None:  # noqa: F811
    """Chance is 10%; linear classifiers on raw fashion-mnist pixels reach ~84% (zalandoresearch benchmark).
    Cross-checked against a closed-form linear classifier (ridge regression onto one-hot labels) on the same images:
    a trained softmax probe should be at least as good."""
    from sklearn.linear_model import RidgeClassifier

    xtr, ytr, xte, yte = fmnist_pixels
    xtr, ytr = xtr[:5000].astype(np.float32) / 255, ytr[:5000]
    xte = xte.astype(np.float32) / 255
    res = linear_probe(LabelledFeatures(xtr, ytr, xte, yte), lrs=[0.01, 0.001], epochs=15)
    assert res.test_accuracy > 0.75, res
    ref = RidgeClassifier(alpha=1.0).fit(xtr, ytr).score(xte, yte)
    assert 0.7 < ref < res.test_accuracy + 0.01, (res.test_accuracy, ref)
