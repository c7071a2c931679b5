"""Relational losses over the global batch of summaries.

ARKD, asymmetric relational knowledge distillation (AMoE / SigLino, arXiv 2512.20157): with D^T and D^S the pairwise
Euclidean distances between teacher and student summaries, each divided by its mean over pairs i != j, and m the
median of D^T over those pairs,
    L = 1/(B(B-1)) sum_{i != j} [ 1(D^T_ij < m) h(max(D^S_ij - D^T_ij, 0)) + 1(D^T_ij >= m) h(max(D^T_ij - D^S_ij, 0)) ]
with h = smooth-L1: pairs the teacher sees as close are only pulled together, far pairs only pushed apart.
Symmetric RKD (Park et al., CVPR 2019, distance term): smooth-L1 on D^S - D^T for all pairs.
The median is torch.median's (the lower middle value for an even number of pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalized_distances(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, D] -> (distances [B, B] divided by their mean over i != j, off-diagonal mask [B, B])."""
    x = x.float()
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    # Differences, not |a|^2 + |b|^2 - 2ab: equal rows (e.g. every image's CLS at the release's identity init, whose
    # output projections start at zero) get distance exactly 0 and gradient 0, not rounding noise through sqrt.
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") * off
    return d / (d[off].mean().clamp_min(1e-12)), off


def arkd_from_distances(ds: Tensor, dt: Tensor, off: Tensor, beta: float = 1.0) -> Tensor:
    """ARKD on already-normalised distance matrices (student ds, teacher dt, [B, B])."""
    b = ds.shape[0]
    m = dt[off].median()
    close = (dt < m) & off
    far = (dt >= m) & off
    shrink = (ds - dt).clamp_min(0)
    expand = (dt - ds).clamp_min(0)
    h_shrink = F.smooth_l1_loss(shrink, torch.zeros_like(shrink), reduction="none", beta=beta)
    h_expand = F.smooth_l1_loss(expand, torch.zeros_like(expand), reduction="none", beta=beta)
    return (h_shrink * close + h_expand * far).sum() / (b * (b - 1))


def arkd_loss(student: Tensor, teacher: Tensor, beta: float = 1.0) -> Tensor:
    """ARKD between student and teacher summaries [B, D_s], [B, D_t] (teacher side carries no gradient)."""
    if student.shape[0] < 2:
        return student.sum() * 0
    ds, off = normalized_distances(student)
    with torch.no_grad():
        dt, _ = normalized_distances(teacher)
    return arkd_from_distances(ds, dt, off, beta)


def rkd_loss(student: Tensor, teacher: Tensor, beta: float = 1.0) -> Tensor:
    """Symmetric RKD distance loss: smooth-L1(D^S - D^T) over all pairs i != j, 1/(B(B-1)) normalised."""
    b = student.shape[0]
    if b < 2:
        return student.sum() * 0
    ds, off = normalized_distances(student)
    with torch.no_grad():
        dt, _ = normalized_distances(teacher)
    h = F.smooth_l1_loss(ds, dt, reduction="none", beta=beta)
    return (h * off).sum() / (b * (b - 1))
