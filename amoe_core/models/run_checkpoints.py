"""A distill run's checkpoints on disk: the layout, and reading back the newest one that reads whole.

Layout: `runs/<run>/checkpoints/step_0000100/{model.safetensors, optimizer.pt, state.json}` plus `checkpoints/latest`
(the name of the newest complete checkpoint). Training writes them atomically and reads them for `--resume`
(amoe_core.checkpoints); loading a trained student reads only the weights (amoe_core.models.trained).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file

from amoe_core.errors import AmoeError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
LATEST = "latest"

T = TypeVar("T")


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


@dataclass(frozen=True)
class Weights:
    """A checkpoint's weights read back whole, with its state.json."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]


def read_weights(ckpt: Path, device: str | torch.device = "cpu") -> Weights:
    state = json.loads((ckpt / STATE_FILE).read_text())
    int(state["step"])  # a state without a step is damaged
    return Weights(ckpt, state, load_model_tensors(ckpt, device))


def newest_weights(checkpoints: Path) -> Weights | None:
    """The newest checkpoint whose weights read back (on CPU), warning about any newer damaged one."""
    found, skipped = newest_readable(checkpoints, read_weights)
    for why in skipped:
        log.warning("skipped unreadable checkpoint %s", why)
    return found
