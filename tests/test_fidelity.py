"""Fidelity metrics: 1.0 against itself, monotonically lower with more noise, invariances and hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from amoe_core.errors import AmoeError
from amoe_core.eval.fidelity import distance_spearman, fidelity, linear_cka, mean_cosine


def _features(rng: np.random.Generator, n: int = 300, d: int = 48) -> np.ndarray:
    # Low-rank structure plus a little isotropic spread, like real embeddings.
    return rng.normal(size=(n, 6)) @ rng.normal(size=(6, d)) + 0.3 * rng.normal(size=(n, d)) + 2.0


def test_identical_features_score_one() -> None:
    rng = np.random.default_rng(0)
    s, p = _features(rng), _features(rng, n=900)
    out = fidelity(s, s, p, p)
    assert out == pytest.approx({"summary_cos": 1.0, "patch_cos": 1.0, "cka": 1.0, "spearman": 1.0}, abs=1e-9)


def test_metrics_drop_monotonically_with_noise() -> None:
    rng = np.random.default_rng(1)
    s, p = _features(rng), _features(rng, n=900)
    noise_s, noise_p = rng.normal(size=s.shape), rng.normal(size=p.shape)
    scores = [fidelity(s + sigma * noise_s, s, p + sigma * noise_p, p) for sigma in (0.0, 0.3, 1.0, 3.0, 10.0)]
    for name in ("summary_cos", "patch_cos", "cka", "spearman"):
        values = [sc[name] for sc in scores]
        assert all(a > b for a, b in zip(values, values[1:])), (name, values)
        assert values[-1] < 0.6, (name, values)  # heavy noise destroys the relation


def test_cka_is_rotation_and_scale_invariant_and_matches_hsic_formula() -> None:
    rng = np.random.default_rng(2)
    a, b = _features(rng, 200, 16), _features(rng, 200, 24)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(3.0 * a @ q, a) == pytest.approx(1.0, abs=1e-9)
    # Reference: HSIC form with Gram matrices, tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)).
    n = len(a)
    h = np.eye(n) - 1.0 / n
    k, ell = a @ a.T, b @ b.T

    def hsic(x, y):
        return np.trace(x @ h @ y @ h)

    ref = hsic(k, ell) / np.sqrt(hsic(k, k) * hsic(ell, ell))
    assert linear_cka(a, b) == pytest.approx(ref, rel=1e-9)


def test_spearman_and_cosine_against_direct_computation() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 7))
    da = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))[np.triu_indices(40, 1)]
    db = np.sqrt(((b[:, None] - b[None]) ** 2).sum(-1))[np.triu_indices(40, 1)]
    assert distance_spearman(a, b) == pytest.approx(spearmanr(da, db).statistic, abs=1e-12)
    assert distance_spearman(a, 5 * a + 1) == pytest.approx(1.0)  # distances scale, ranks do not change
    c = rng.normal(size=(40, 5))
    ref = np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, c)])
    assert mean_cosine(a, c) == pytest.approx(ref, abs=1e-12)
    assert mean_cosine(a, -a) == pytest.approx(-1.0)


def test_shape_errors_are_clear() -> None:
    with pytest.raises(AmoeError, match="matching 2-D arrays"):
        mean_cosine(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(AmoeError, match="same number"):
        linear_cka(np.ones((4, 3)), np.ones((5, 3)))
