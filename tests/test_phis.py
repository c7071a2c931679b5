"""PHI-S: Hadamard constructions, whitening statistics, exact inverse, clear error for unsupported widths."""

import pytest
import torch

from amoe_core.errors import AmoeError
from amoe_core.models.phis import PhiS, hadamard


@pytest.mark.parametrize("n", [1, 2, 8, 12, 20, 24, 36, 40, 72, 96, 1152])
def test_hadamard_is_orthogonal_with_equal_magnitudes(n):
    h = hadamard(n)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-10, rtol=0)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5))


def test_hadamard_unsupported_dimension_is_a_clear_error():
    with pytest.raises(AmoeError, match="no Hadamard construction for feature dimension 30"):
        hadamard(30)
    with pytest.raises(AmoeError, match="dimension 7"):
        PhiS(7).fit(torch.randn(10, 7))


@pytest.mark.parametrize("dim", [32, 48])
def test_phis_whitens_to_zero_mean_and_equal_variance(dim):
    torch.manual_seed(0)
    scales = torch.logspace(-2, 1, dim)  # very anisotropic, correlated, shifted features
    mix = torch.linalg.qr(torch.randn(dim, dim)).Q
    x = (torch.randn(20000, dim) * scales) @ mix.T + torch.randn(dim) * 5
    phis = PhiS(dim).fit(x)
    y = phis(x)
    assert y.mean(0).abs().max() < 1e-4
    var = y.var(0)
    assert (var - 1).abs().max() < 1e-3  # unit variance in every dimension
    assert (x.var(0).max() / x.var(0).min()) > 5  # the input was far from it
    torch.testing.assert_close(phis.inverse(y), x, atol=1e-4, rtol=1e-5)
    assert float(phis.alpha) == pytest.approx(1 / float(torch.linalg.eigvalsh(torch.cov(x.double().T)).mean()) ** 0.5)


def test_phis_state_roundtrip_and_identity_before_fit():
    x = torch.randn(5, 12)
    fresh = PhiS(12)
    torch.testing.assert_close(fresh(x), x)
    fitted = PhiS(12).fit(torch.randn(100, 12) * 3)
    restored = PhiS(12)
    restored.load_state_dict(fitted.state_dict())
    assert bool(restored.fitted)
    torch.testing.assert_close(restored(x), fitted(x))
