"""Learning-rate schedule: linear warmup then cosine decay to `min_lr` (Loshchilov & Hutter 2017, SGDR).

A pure function of the step, so a resumed run needs only the step to continue the schedule exactly.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): warmup reaches `lr` at step `warmup_steps - 1`."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
