"""Checkpoints that survive a kill at any moment, and loading a trained student for evaluation or export.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


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


# ---------------------------------------------------------------------------------------------------------- load
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


@dataclass(frozen=True)
class Resumable:
    """A checkpoint read back whole: what `--resume` continues from."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


def resumable_checkpoint(
    checkpoints: Path, device: str | torch.device = "cpu", optimizer: bool = True
) -> tuple[Resumable | None, list[str]]:
    """The newest complete checkpoint whose files all read back (state, weights and, with `optimizer`, the optimizer
    state), and one line per newer checkpoint skipped on the way, saying why (a disk error or a copy can damage a
    checkpoint after its rename). Export and evaluation read only the weights: `optimizer=False`."""
    skipped: list[str] = []
    for ckpt in reversed(complete_checkpoints(Path(checkpoints))):
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
            int(state["step"])
            opt = load_optimizer_state(ckpt) if optimizer else None
            found = Resumable(ckpt, state, load_model_tensors(ckpt, device), opt)
        except Exception as e:  # noqa: BLE001 - whatever the damage (json, safetensors, pickle framing): fall back
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            skipped.append(f"{ckpt.name} ({type(e).__name__}: {detail})")
            continue
        return found, skipped
    return None, skipped


def newest_weights(checkpoints: Path) -> Resumable | None:
    """The newest checkpoint whose weights read back (on CPU), warning about any newer damaged one."""
    found, skipped = resumable_checkpoint(checkpoints, "cpu", optimizer=False)
    for why in skipped:
        log.warning("skipped unreadable checkpoint %s", why)
    return found


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(ckpt) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AmoeError(f"checkpoint {ckpt}: unreadable {STATE_FILE} ({e}); delete that directory to fall back") from e


def load_model_tensors(ckpt: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / MODEL_FILE), device=str(device))


def load_optimizer_state(ckpt: Path) -> dict[str, Any] | None:
    path = Path(ckpt) / OPTIMIZER_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------- student
STUDENT_SPEC = "student.json"
SPEC_FORMAT = "amoe-student/2"  # 2: the released SigLino architecture


def student_spec(params: Any, teachers: dict[str, nn.Module]) -> dict[str, Any]:
    """Everything needed to rebuild the student without its teachers: architecture and, per teacher, the head
    dimensions and the config of a frozen summary head (SigLIP2's MAP head; its weights are in the student's)."""
    spec_teachers: dict[str, Any] = {}
    for name, t in teachers.items():
        head = getattr(t, "summary_head", None)
        head_spec = None
        if head is not None:
            if getattr(t, "kind", None) != "siglip2":
                raise AmoeError(f"teacher {name!r}: cannot describe its summary head ({type(head).__name__})")
            head_spec = {"kind": "siglip2", "config": t.model.config.to_dict()}
        spec_teachers[name] = {
            "dim": int(t.dim),
            "num_registers": int(t.num_registers),
            "summary_head": head_spec,
            "kind": getattr(t, "kind", None),
        }
    return {
        "format": SPEC_FORMAT,
        "student": params.student.model_dump(mode="json"),
        "max_images_per_seq": params.packing.max_images_per_seq,
        "patch_size": params.packing.patch_size,
        "teachers": spec_teachers,
    }


def _summary_head(spec: dict[str, Any] | None) -> nn.Module | None:
    if spec is None:
        return None
    if spec["kind"] != "siglip2":
        raise AmoeError(f"unknown summary head kind {spec['kind']!r} in {STUDENT_SPEC}")
    from transformers import Siglip2VisionConfig
    from transformers.models.siglip2.modeling_siglip2 import Siglip2MultiheadAttentionPoolingHead

    from amoe_core.models.teachers.siglip2 import Siglip2SummaryHead

    cfg = {k: v for k, v in spec["config"].items() if k not in ("model_type", "transformers_version")}
    return Siglip2SummaryHead(Siglip2MultiheadAttentionPoolingHead(Siglip2VisionConfig(**cfg)))


def build_from_spec(spec: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """(untrained student, teacher dims) from a `student_spec` dict."""
    from amoe_core.config import StudentConfig
    from amoe_core.models.heads import TeacherDims
    from amoe_core.models.student import build_student

    if spec.get("format") != SPEC_FORMAT:
        raise AmoeError(f"{STUDENT_SPEC}: format {spec.get('format')!r} is not {SPEC_FORMAT!r}")
    dims = {
        name: TeacherDims(t["dim"], t["num_registers"], _summary_head(t["summary_head"]), t.get("kind"))
        for name, t in spec["teachers"].items()
    }
    student = build_student(StudentConfig(**spec["student"]), dims, spec["max_images_per_seq"])
    return student, dims


def load_student(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], dict]:
    """The trained student of a run (its newest complete checkpoint), in eval mode.

    Returns (student, teacher_dims {name: TeacherDims}, phis {name: {"summary": PhiS, "patches": PhiS}}); the PHI-S
    modules are the loss-side normalisers (the student's adapter outputs are already in each teacher's raw space).
    """
    run_dir = Path(run_dir)
    spec_path = run_dir / STUDENT_SPEC
    if not spec_path.is_file():
        raise AmoeError(f"{run_dir}: no {STUDENT_SPEC}; is this a distill run directory (runs/<run>)?")
    found = newest_weights(run_dir / "checkpoints")
    if found is None:
        raise AmoeError(f"{run_dir}: no complete checkpoint yet; train it with `amoe distill` first")
    student, dims = build_from_spec(json.loads(spec_path.read_text()))
    student.load_state_dict(found.model)
    student = student.to(device).eval()
    phis = {name: {"summary": pair.summary, "patches": pair.patches} for name, pair in student.phis.items()}
    return student, dims, phis
