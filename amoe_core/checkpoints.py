"""A distill run's checkpoints: the layout, writing them so that they survive a kill at any moment, and reading the
newest one that reads whole (a trained student's weights, amoe_core.models.trained; everything, for `--resume`).

Layout: `runs/<run>/checkpoints/step_0000100/{model.safetensors, optimizer.pt, state.json}` plus `checkpoints/latest`
(the name of the newest complete checkpoint). A checkpoint is written into a hidden temporary directory, every file
fsynced, then renamed into place (rename is atomic); only then is `latest` replaced, itself atomically. A kill
before the rename leaves a `.tmp-*` directory that readers ignore and the next save removes; a kill after it leaves
a complete checkpoint that `latest` may not name yet, which the scan fallback finds. Weights are safetensors; the
optimizer state holds only tensors and numbers and is read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from amoe_core.errors import AmoeError
from amoe_core.io import _fsync_dir, atomic_write_text

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
LATEST = "latest"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------- layout
def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoint directories under their final name with every file present, oldest first."""
    out = []
    for d in sorted(Path(checkpoints).glob("step_*")):
        if d.is_dir() and (d / MODEL_FILE).is_file() and (d / STATE_FILE).is_file():
            out.append(d)
    return out


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint. `latest` names it in normal operation (for people and tools); a kill between
    the rename and the pointer update leaves a newer complete one, so the scan, not the pointer, decides."""
    found = complete_checkpoints(Path(checkpoints))
    return found[-1] if found else None


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(ckpt) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AmoeError(f"checkpoint {ckpt}: unreadable {STATE_FILE} ({e}); delete that directory to fall back") from e


def load_model_tensors(ckpt: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / MODEL_FILE), device=str(device))


def newest_readable(checkpoints: Path, read: Callable[[Path], T]) -> tuple[T | None, list[str]]:
    """`read(ckpt)` of the newest complete checkpoint it succeeds on, and one line per newer checkpoint skipped on the
    way, saying why (a disk error or a copy can damage a checkpoint after its rename)."""
    skipped: list[str] = []
    for ckpt in reversed(complete_checkpoints(Path(checkpoints))):
        try:
            return read(ckpt), skipped
        except Exception as e:  # noqa: BLE001 - whatever the damage (json, safetensors, pickle framing): fall back
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            skipped.append(f"{ckpt.name} ({type(e).__name__}: {detail})")
    return None, skipped


def load_optimizer_state(ckpt: Path) -> dict[str, Any] | None:
    path = Path(ckpt) / OPTIMIZER_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


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


# ---------------------------------------------------------------------------------------------------------- read back
@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back whole: its state.json, its weights and, when read for `--resume`, the optimizer state
    (None when not read, or when the checkpoint has none)."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None


def read_checkpoint(ckpt: Path, device: str | torch.device = "cpu", optimizer: bool = False) -> Checkpoint:
    state = json.loads((ckpt / STATE_FILE).read_text())
    int(state["step"])  # a state without a step is damaged
    model = load_model_tensors(ckpt, device)
    return Checkpoint(ckpt, state, model, load_optimizer_state(ckpt) if optimizer else None)


def newest_weights(checkpoints: Path) -> Checkpoint | None:
    """The newest checkpoint whose weights read back (on CPU, no optimizer state), warning about any newer damaged
    one."""
    found, skipped = newest_readable(checkpoints, read_checkpoint)
    for why in skipped:
        log.warning("skipped unreadable checkpoint %s", why)
    return found


def resumable_checkpoint(checkpoints: Path, device: str | torch.device = "cpu") -> tuple[Checkpoint | None, list[str]]:
    """The newest complete checkpoint whose files all read back (state, weights, optimizer state), and one line per
    newer checkpoint skipped on the way, saying why."""
    return newest_readable(checkpoints, lambda ckpt: read_checkpoint(ckpt, device, optimizer=True))
