"""Weighted kNN classification on frozen features, DINO protocol (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"; also the AMoE / SigLino kNN numbers, arXiv 2512.20157).

Features are L2-normalised, neighbours are the top-k by cosine similarity (faiss IndexFlatIP, exact; on the GPU when
faiss sees one), and each neighbour votes for its label with weight exp(sim / T). One search with k = max(ks) serves
every k in the list: the k nearest are a prefix of the max(ks) nearest.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch

from amoe_core.errors import AmoeError

# Queries per faiss search call: bounds the [chunk, k] result arrays, not the work.
_SEARCH_CHUNK = 16384


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C-contiguous: what faiss wants). Zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _index(dim: int, use_gpu: bool | None) -> faiss.Index:
    index = faiss.IndexFlatIP(dim)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if (use_gpu is None and gpus > 0) or use_gpu:
        if gpus == 0:
            raise AmoeError(
                "kNN: use_gpu=True but faiss sees no GPU; install faiss-gpu (extra `gpu`) or leave it unset"
            )
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def knn_search(
    train: np.ndarray, test: np.ndarray, k: int, use_gpu: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of each test row among the train rows: (similarities, indices), [n_test, k]."""
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise AmoeError(
            f"kNN: train and test features must be 2-D with the same width, got {train.shape} and {test.shape}"
        )
    if len(train) < k:
        raise AmoeError(f"kNN: k = {k} needs at least {k} training images, the train split has {len(train)}")
    index = _index(train.shape[1], use_gpu)
    index.add(l2_normalise(train))
    queries = l2_normalise(test)
    sims, idx = [], []
    for start in range(0, len(queries), _SEARCH_CHUNK):
        d, i = index.search(queries[start : start + _SEARCH_CHUNK], k)
        sims.append(d)
        idx.append(i)
    return np.concatenate(sims), np.concatenate(idx)


def weighted_votes(sims: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, temperature: float) -> np.ndarray:
    """Class scores [n, C]: sum over neighbours of exp(sim / T) into each neighbour's class (DINO eval_knn).

    Each row is scaled by exp(-max_sim / T), which leaves its argmax unchanged but keeps exp() finite in float32
    for any temperature (exp(1 / 0.005) would overflow).
    """
    s = torch.from_numpy(np.ascontiguousarray(sims, dtype=np.float32))
    weights = (s - s.amax(dim=1, keepdim=True)).div_(temperature).exp_()
    labels = torch.from_numpy(np.ascontiguousarray(neighbour_labels, dtype=np.int64))
    votes = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32)
    votes.scatter_add_(1, labels, weights)
    return votes.numpy()


def knn_predict(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    ks: Sequence[int] = (10, 20, 100),
    temperature: float = 0.07,
    num_classes: int | None = None,
    use_gpu: bool | None = None,
) -> dict[int, np.ndarray]:
    """Predicted class of every test row for each k: {k: int64 [n_test]}. Ties go to the lowest class index."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_labels) != len(train):
        raise AmoeError(f"kNN: {len(train)} training features but {len(train_labels)} labels")
    if not ks or min(ks) < 1:
        raise AmoeError(f"kNN: ks must be positive integers, got {list(ks)}")
    num_classes = int(num_classes if num_classes is not None else train_labels.max() + 1)
    sims, idx = knn_search(train, test, max(ks), use_gpu)
    neighbour_labels = train_labels[idx]
    out: dict[int, np.ndarray] = {}
    for k in ks:
        votes = weighted_votes(sims[:, :k], neighbour_labels[:, :k], num_classes, temperature)
        out[k] = votes.argmax(axis=1).astype(np.int64)
    return out


def knn_accuracy(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    ks: Sequence[int] = (10, 20, 100),
    temperature: float = 0.07,
    use_gpu: bool | None = None,
) -> dict[int, float]:
    """Top-1 accuracy in [0, 1] for each k."""
    test_labels = np.asarray(test_labels, dtype=np.int64)
    num_classes = int(max(np.max(train_labels), np.max(test_labels)) + 1)
    preds = knn_predict(train, train_labels, test, ks, temperature, num_classes, use_gpu)
    return {k: float((p == test_labels).mean()) for k, p in preds.items()}
