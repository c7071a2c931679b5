"""Linear probe on frozen features (the dinov2 / dinov3 protocol, as the AMoE paper uses it).

A single linear layer trained with SGD (momentum 0.9) and a cosine learning-rate schedule; the learning rate is
picked from a grid by accuracy on a validation split carved (stratified) from the training set, then the probe is
retrained on the whole training set with that rate and scored once on the test set. Features are standardised with
training statistics so that one learning-rate grid suits every feature space (teachers differ in scale by orders of
magnitude; PHI-S targets have unit variance, raw teachers do not).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from amoe_core.device import pick_device
from amoe_core.errors import AmoeError
from amoe_core.eval.labels import LabelledFeatures


@dataclass
class ProbeResult:
    test_accuracy: float
    best_lr: float
    val_accuracy: dict[float, float] = field(default_factory=dict)  # lr -> accuracy on the carved validation split


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): about `val_fraction` of every class goes to validation, at least one image per class
    that has two or more."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(idx) - 1, max(1, round(val_fraction * len(idx)))) if len(idx) > 1 else 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """A probe step is a few tiny matmuls: on CPU, intra-op threads cost more than they save (measured ~6x slower
    with 2 threads on a busy 2-core machine), so run them on one thread and restore the setting afterwards."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lr: float,
    epochs: int,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Linear:
    """SGD (momentum 0.9) with a per-step cosine schedule from `lr` to 0; deterministic for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():  # deterministic init independent of the global RNG
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for start in range(0, len(x), batch_size):
            b = order[start : start + batch_size]
            loss = loss_fn(head(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head


@torch.no_grad()
def _accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x).argmax(dim=1) == y).float().mean())


def linear_probe(
    data: LabelledFeatures,
    lrs: Sequence[float] = (0.1, 0.03, 0.01),
    epochs: int = 30,
    val_fraction: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ProbeResult:
    """Pick the learning rate on a validation split carved from train, retrain on all of train, report test accuracy."""
    if not lrs:
        raise AmoeError("linear probe: evaluate.probe_lrs is empty; give at least one learning rate")
    train_labels, test_labels, num_classes = data.labels()
    train, test = data.train, data.test
    if len(np.unique(train_labels)) < 2:
        raise AmoeError("linear probe: the training split has fewer than two classes")
    dev = torch.device(device) if device is not None else pick_device()
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64) + 1e-6

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32)).to(dev)

    xtr, ytr = tensor(train), torch.from_numpy(train_labels).to(dev)
    xte, yte = tensor(test), torch.from_numpy(test_labels).to(dev)
    fit_idx, val_idx = (torch.from_numpy(i).to(dev) for i in stratified_split(train_labels, val_fraction, seed))
    val_acc: dict[float, float] = {}
    with _single_thread_on_cpu(dev):
        for lr in lrs:
            head = train_linear(xtr[fit_idx], ytr[fit_idx], num_classes, lr, epochs, batch_size, weight_decay, seed)
            val_acc[float(lr)] = _accuracy(head, xtr[val_idx], ytr[val_idx])
        best = max(val_acc, key=lambda lr: val_acc[lr])  # first of equals: grid order breaks ties
        head = train_linear(xtr, ytr, num_classes, best, epochs, batch_size, weight_decay, seed)
    return ProbeResult(test_accuracy=_accuracy(head, xte, yte), best_lr=best, val_accuracy=val_acc)
