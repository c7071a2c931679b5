"""Training checkpoints that survive a kill at any moment, and reading one back whole for `--resume`.

The layout and the read-back scan are amoe_core.models.run_checkpoints (loading a trained student reads the same
files, amoe_core.models.trained). A checkpoint is written into a hidden temporary directory, every file
fsynced, then renamed into place (rename is atomic); only then is `latest` replaced, itself atomically. A kill
before the rename leaves a `.tmp-*` directory that readers ignore and the next save removes; a kill after it leaves
a complete checkpoint that `latest` may not name yet, which the scan fallback finds. Weights are safetensors; the
optimizer state holds only tensors and numbers and is read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from amoe_core.io import _fsync_dir, atomic_write_text, full_disk_as_os_error
from amoe_core.models.run_checkpoints import (
    LATEST,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    complete_checkpoints,
    newest_readable,
    read_weights,
    step_dir_name,
)


# ---------------------------------------------------------------------------------------------------------- RNG
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states as JSON-able values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------------------- save
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict as independent contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(
    checkpoints: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write a complete checkpoint for `step` atomically, point `latest` at it, keep the newest `keep`."""
    checkpoints = Path(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints.glob(".tmp-*"):  # left by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    final = checkpoints / step_dir_name(step)
    tmp = checkpoints / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        with full_disk_as_os_error(tmp):
            save_file(model_tensors(model), str(tmp / MODEL_FILE), metadata={"step": str(step)})
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. at preemption right after a periodic save)
            old = checkpoints / f".tmp-old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(checkpoints)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(checkpoints / LATEST, final.name + "\n")
    _prune(checkpoints, keep)
    return final


def _prune(checkpoints: Path, keep: int) -> None:
    done = complete_checkpoints(checkpoints)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- resume
@dataclass(frozen=True)
class Resumable:
    """A checkpoint read back whole: what `--resume` continues from."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


def load_optimizer_state(ckpt: Path) -> dict[str, Any] | None:
    path = Path(ckpt) / OPTIMIZER_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def resumable_checkpoint(checkpoints: Path, device: str | torch.device = "cpu") -> tuple[Resumable | None, list[str]]:
    """The newest complete checkpoint whose files all read back (state, weights, optimizer state), and one line per
    newer checkpoint skipped on the way, saying why."""

    def read(ckpt: Path) -> Resumable:
        weights = read_weights(ckpt, device)
        return Resumable(ckpt, weights.state, weights.model, load_optimizer_state(ckpt))

    return newest_readable(checkpoints, read)
