"""Student-teacher fidelity: how closely the student's adapter features (each teacher's raw space) reproduce
that teacher's own features on the same images.

- summary_cos / patch_cos: mean cosine similarity of matching rows (per image; per patch token).
- cka: linear centred kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited"), invariant to rotation and isotropic scale, 1.0 for identical representations.
- spearman: rank correlation of the two pairwise Euclidean distance matrices (upper triangles): whether the student
  keeps the teacher's neighbourhood geometry, which the ARKD loss is meant to preserve (AMoE, arXiv 2512.20157).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from amoe_core.errors import AmoeError

# Pairwise distances grow as n^2: Spearman uses at most this many images (the first ones, deterministic).
MAX_SPEARMAN_IMAGES = 1500


def _check(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise AmoeError(f"fidelity: {what} must be matching 2-D arrays, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise AmoeError(f"fidelity: {what} needs at least two rows, got {len(a)}")
    return a, b


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of cos(a_i, b_i)."""
    a, b = _check(a, b, "cosine inputs")
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA = ||B_c^T A_c||_F^2 / (||A_c^T A_c||_F ||B_c^T B_c||_F) with column-centred A_c, B_c.

    Widths may differ (only rows must match), so a student space can be compared with any teacher space.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b) or len(a) < 2:
        raise AmoeError(
            f"fidelity: CKA needs two 2-D arrays with the same number (>= 2) of rows, got {a.shape}, {b.shape}"
        )
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    norm = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / norm) if norm > 0 else 0.0


def distance_spearman(a: np.ndarray, b: np.ndarray, max_images: int = MAX_SPEARMAN_IMAGES) -> float:
    """Spearman correlation between the pairwise Euclidean distances of the rows of `a` and of `b`."""
    a, b = np.asarray(a, dtype=np.float64)[:max_images], np.asarray(b, dtype=np.float64)[:max_images]
    if len(a) != len(b) or len(a) < 3:
        raise AmoeError(f"fidelity: Spearman of distances needs >= 3 matching rows, got {len(a)} and {len(b)}")
    rho = spearmanr(pdist(a), pdist(b)).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def fidelity(
    student_summary: np.ndarray,
    teacher_summary: np.ndarray,
    student_patches: np.ndarray | None = None,
    teacher_patches: np.ndarray | None = None,
) -> dict[str, float]:
    """The four numbers of eval.json's "fidelity" section for one teacher (patch_cos absent without patches)."""
    out = {
        "summary_cos": mean_cosine(student_summary, teacher_summary),
        "cka": linear_cka(student_summary, teacher_summary),
        "spearman": distance_spearman(student_summary, teacher_summary),
    }
    if student_patches is not None and teacher_patches is not None:
        out["patch_cos"] = mean_cosine(student_patches, teacher_patches)
    return out
