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
from amoe_core.eval.labels import LabelledFeatures, split_labels

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
    data: LabelledFeatures, ks: Sequence[int] = (10, 20, 100), temperature: float = 0.07, use_gpu: bool | None = None
) -> dict[int, float]:
    """Top-1 accuracy in [0, 1] for each k."""
    train_labels, test_labels, num_classes = data.labels()
    preds = knn_predict(data.train, train_labels, data.test, ks, temperature, num_classes, use_gpu)
    return {k: float((p == test_labels).mean()) for k, p in preds.items()}


def per_class_accuracy(pred: np.ndarray, test_labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Top-1 accuracy of each class that has test images: {class name: fraction of its test images right}."""
    test_labels = np.asarray(test_labels, dtype=np.int64)
    return {
        classes[c]: float((pred[test_labels == c] == c).mean()) for c in range(len(classes)) if (test_labels == c).any()
    }


def entropy_fused_votes(votes: Sequence[np.ndarray], beta: float = 5.0) -> np.ndarray:
    """The released SigLino kNN protocol's fusion of several feature spaces' class votes [n, C] (tiiuae/amoe
    evals/knn): each space's votes normalised to a distribution p (sum clamped at 1e-8), its entropy
    H = -sum max(p, 1e-8) log max(p, 1e-8), weights softmax(-beta * H) over the spaces (a confident space counts
    more), fused votes = sum of weight * votes."""
    v = [torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in votes]
    entropies = []
    for x in v:
        p = (x / x.sum(-1, keepdim=True).clamp_min(1e-8)).clamp_min(1e-8)
        entropies.append(-(p * p.log()).sum(-1))
    w = torch.softmax(-beta * torch.stack(entropies, -1), -1)  # [n, spaces]
    return sum(w[:, i : i + 1] * x for i, x in enumerate(v)).numpy()


def knn_ensemble_accuracy(
    trains: Sequence[np.ndarray],
    train_labels: np.ndarray,
    tests: Sequence[np.ndarray],
    test_labels: np.ndarray,
    ks: Sequence[int] = (10, 20, 100),
    temperature: float = 0.07,
    beta: float = 5.0,
    use_gpu: bool | None = None,
) -> dict[int, float]:
    """Top-1 accuracy per k of the released protocol (`knn_ensemble_predict`)."""
    _, test_labels, _ = split_labels(train_labels, test_labels)
    preds = knn_ensemble_predict(trains, train_labels, tests, test_labels, ks, temperature, beta, use_gpu)
    return {k: float((p == test_labels).mean()) for k, p in preds.items()}


def knn_ensemble_predict(
    trains: Sequence[np.ndarray],
    train_labels: np.ndarray,
    tests: Sequence[np.ndarray],
    test_labels: np.ndarray,
    ks: Sequence[int] = (10, 20, 100),
    temperature: float = 0.07,
    beta: float = 5.0,
    use_gpu: bool | None = None,
) -> dict[int, np.ndarray]:
    """Predicted class per k of the released protocol: per space (e.g. each teacher's summary) the top-k cosine
    neighbours vote exp(sim / T) (unshifted: the fusion adds votes of different spaces, so their scales must be the
    release's; float64 keeps exp(1 / T) finite for T >= 0.0014), fused with `entropy_fused_votes`."""
    if len(trains) != len(tests) or not trains:
        raise AmoeError(
            f"kNN ensemble: needs as many train as test feature spaces (>= 1), got {len(trains)}/{len(tests)}"
        )
    train_labels, test_labels, num_classes = split_labels(train_labels, test_labels)
    searched = [knn_search(tr, te, max(ks), use_gpu) for tr, te in zip(trains, tests, strict=True)]
    out = {}
    for k in ks:
        votes = []
        for sims, idx in searched:
            w = torch.from_numpy(sims[:, :k].astype(np.float64)).div(temperature).exp()
            v = torch.zeros(len(sims), num_classes, dtype=torch.float64)
            votes.append(v.scatter_add_(1, torch.from_numpy(train_labels[idx[:, :k]]), w).numpy())
        out[k] = entropy_fused_votes(votes, beta).argmax(1)
    return out
