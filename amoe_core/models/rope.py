"""Golden 2D rotary position embedding on per-image patch coordinates (the released SigLino student).

Each head is split in two halves. The first half carries 1D RoPE over the token's temporal position, which is 0 for
every image token, so for images it is the identity and is not computed here. The second half carries "golden" 2D
RoPE: rotated pair f of head h turns by the angle <pos, omega_f * u_hf>, with frequencies omega_f log-spaced from
`min_freq` to `max_freq` and unit directions u_hf taken from the 2D generalised-golden-ratio (R_2) low-discrepancy
sequence mapped through the inverse Gaussian CDF (quasi-random, evenly spread directions; one set per head).

Coordinates are centred and aspect-preserving: row r of an H x W patch grid sits at -sqrt(H/W) ... +sqrt(H/W)
(evenly, both ends included), column c at -sqrt(W/H) ... +sqrt(W/H); a single row or column sits at the low end.
CLS, registers and padding are not rotated. Pairs are adjacent channels (2i, 2i+1), as in complex-valued RoPE.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _generalised_golden_ratio(dims: int, iterations: int = 10) -> float:
    """The positive root of x^(dims+1) = x + 1 by fixed-point iteration (the released buffers use 10 steps)."""
    x = 2.0
    for _ in range(iterations):
        x = (1.0 + x) ** (1.0 / (dims + 1.0))
    return x


def golden_directions(n: int, dims: int = 2) -> Tensor:
    """n unit vectors [n, dims] from the R_d sequence frac(i / phi_d^k), i = 1..n, k = 1..dims, Gaussianised."""
    phi = _generalised_golden_ratio(dims)
    # on the CPU explicitly: a buffer computed once, also when the model is built under torch.device("meta")
    step = phi ** -torch.arange(1, dims + 1, dtype=torch.float64, device="cpu")
    u = torch.remainder(torch.arange(1, n + 1, dtype=torch.float64, device="cpu")[:, None] * step, 1.0)
    v = torch.special.erfinv(2.0 * u - 1.0)
    return (v / v.norm(dim=1, keepdim=True)).float()


def golden_frequencies(heads: int, head_dim: int, min_freq: float, max_freq: float) -> Tensor:
    """[heads, head_dim // 4, 2]: per head and rotated pair of the 2D half, the angular velocity along (row, col)."""
    n_freq = head_dim // 4
    omega = min_freq * (max_freq / min_freq) ** torch.linspace(0, 1, n_freq, device="cpu")
    return golden_directions(heads * n_freq).reshape(heads, n_freq, 2) * omega[:, None]


def centred_coords(coords: Tensor, sizes: Tensor) -> Tensor:
    """coords [..., 2] (row, col), sizes [..., 2] (rows, cols) of each token's image -> [..., 2] float positions."""
    sizes = sizes.to(torch.float32)
    h, w = sizes[..., 0], sizes[..., 1]
    half = torch.stack([(h / w).sqrt(), (w / h).sqrt()], -1)  # half extent along rows, cols
    return -half + 2 * half * coords.to(torch.float32) / (sizes - 1).clamp_min(1)


def golden_angles(pos: Tensor, rotate: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """pos [S, N, 2], rotate [S, N] bool, freqs [H, F, 2] -> (cos, sin) [S, H, N, F]; identity where not rotate."""
    theta = torch.einsum("snp,hfp->shnf", pos.float(), freqs.float())
    theta = theta * rotate[:, None, :, None]
    return theta.cos(), theta.sin()


def apply_golden(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [S, H, N, Dh]: rotate the adjacent pairs of the second half of each head (see module docstring)."""
    half = x.shape[-1] // 2
    keep, rot = x[..., :half], x[..., half:].float()
    a, b = rot[..., 0::2], rot[..., 1::2]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    return torch.cat([keep, out.to(x.dtype)], -1)
