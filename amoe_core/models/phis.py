"""PHI-S: isotropic standardisation of teacher features (Ranzinger et al., "PHI-S: Distribution Balancing for
Label-Free Multi-Teacher Distillation", arXiv 2410.01680), used by AMoE for every teacher target.

x -> alpha * H U^T (x - mu): U the eigenvectors of the feature covariance, H a normalised Hadamard matrix (it spreads
every eigen-direction evenly over all dimensions, so each output dimension gets variance mean(lambda)), and one scalar
alpha = 1 / sqrt(mean(lambda)) so that every dimension has unit variance. The map is orthogonal up to one scale, hence
exactly invertible: the student's outputs can be taken back to teacher space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from amoe_core.errors import AmoeError


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))


def _jacobsthal(q: int) -> Tensor:
    """Q[i, j] = chi(j - i) with chi the quadratic character mod the prime q."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    i = torch.arange(q)
    return chi[(i[None, :] - i[:, None]) % q]


def _paley(m: int) -> Tensor | None:
    """A Hadamard matrix of order m from Paley's constructions with a prime q, or None."""
    if _is_prime(m - 1) and (m - 1) % 4 == 3:  # Paley I: order q + 1
        q = m - 1
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return s + torch.eye(m, dtype=torch.float64)
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:  # Paley II: order 2(q + 1)
        q = m // 2 - 1
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


def hadamard(n: int) -> Tensor:
    """Normalised Hadamard matrix (H H^T = I) of order n = 2^k * m, m = 1 (Sylvester) or a Paley order
    (prime q: q + 1 with q = 3 mod 4, e.g. 12, 20, 72, 1152; 2(q + 1) with q = 1 mod 4, e.g. 36)."""
    k, m = 0, n
    while m >= 1:
        base = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m)
        if base is not None:
            h = base
            for _ in range(k):  # Sylvester doubling
                h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
            return h / math.sqrt(n)
        if m % 2:
            break
        k, m = k + 1, m // 2
    raise AmoeError(
        f"PHI-S: no Hadamard construction for feature dimension {n}; supported: 2^k * m with m = 1 or a Paley "
        "order (q + 1, q prime = 3 mod 4; 2(q + 1), q prime = 1 mod 4), e.g. 64, 768, 1024, 1152"
    )


class PhiS(nn.Module):
    """PHI-S normaliser of D-dimensional features; identity until `fit`. All state is in buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("rotation", torch.eye(dim))  # alpha * H U^T, [D, D]
        self.register_buffer("inverse_rotation", torch.eye(dim))  # (alpha * H U^T)^-1 = U H^T / alpha
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, sample: Tensor) -> PhiS:
        """Estimate mean and covariance from a sample [N, D] of teacher features."""
        if sample.dim() != 2 or sample.shape[1] != self.dim or sample.shape[0] < 2:
            raise AmoeError(f"PHI-S fit needs a [N >= 2, {self.dim}] sample of features, got {list(sample.shape)}")
        x = sample.double()
        mu = x.mean(0)
        cov = (x - mu).T @ (x - mu) / (x.shape[0] - 1)
        eigvals, u = torch.linalg.eigh(cov)
        alpha = 1.0 / eigvals.clamp_min(0).mean().clamp_min(1e-12).sqrt()
        h = hadamard(self.dim)
        self.mean.copy_(mu)
        self.rotation.copy_(alpha * h @ u.T)
        self.inverse_rotation.copy_(u @ h.T / alpha)
        self.alpha.copy_(alpha)
        self.fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) @ self.rotation.to(x.dtype).T

    def inverse(self, y: Tensor) -> Tensor:
        return y @ self.inverse_rotation.to(y.dtype).T + self.mean.to(y.dtype)
