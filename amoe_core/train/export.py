"""`amoe export RUN`: a trained student as a standalone model directory, loadable with one call.

The directory holds `model.safetensors` (weights and buffers: adaptors, PHI-S normalisers, MoE biases; no optimizer
state) and `config.json` (the architecture, each teacher head's dimensions and frozen summary-head config, and where
the weights came from). Nothing else is needed to rebuild it: no teacher checkpoints, no params.yaml.

    from amoe_core.train.export import load_pretrained
    student = load_pretrained("runs/demo/export")

or, timm-style, once this module is imported (it registers the name):

    timm.create_model("amoe_student", pretrained=True, pretrained_cfg_overlay=dict(file="runs/demo/export"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models import register_model
from torch import nn

from amoe_core.config import Params
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_dir
from amoe_core.outputs import claim_outputs
from amoe_core.train.checkpoint import MODEL_FILE, STUDENT_SPEC, build_from_spec, newest_weights

CONFIG_FILE = "config.json"
EXPORT_STAGE = "export"  # the marker an export directory carries (amoe_core/outputs.py)


def resolve_run(params: Params, run: str) -> Path:
    """A run id under distill.runs_dir, or a path to a run directory."""
    for candidate in (Path(params.distill.runs_dir) / run, Path(run)):
        if (candidate / STUDENT_SPEC).is_file():
            return candidate
    raise AmoeError(f"no distill run {run!r} under {params.distill.runs_dir} (and {run!r} is not a run directory)")


def export_run(params: Params, run: str, out: str | Path | None = None) -> Path:
    """Write runs/<run>/export (or `out`) from the run's newest complete checkpoint; replaces an older export."""
    run_dir = resolve_run(params, run)
    found = newest_weights(run_dir / "checkpoints")
    if found is None:
        raise AmoeError(f"run {run_dir} has no complete checkpoint to export; train it first")
    ckpt, tensors = found.path, found.model
    spec = json.loads((run_dir / STUDENT_SPEC).read_text())
    student, _ = build_from_spec(spec)  # validates that the weights fit the architecture before writing
    student.load_state_dict(tensors)
    field = "--out" if out is not None else "export"
    out = Path(out) if out is not None else run_dir / "export"
    inputs = {"checkpoint": ckpt, "run spec": run_dir / STUDENT_SPEC}
    # only an absent or empty directory, or an earlier export (its marker), is replaced: never the run itself, nor a
    # model directory that merely looks alike (a teacher's config.json + model.safetensors)
    with claim_outputs({field: out}, inputs, owner=EXPORT_STAGE):
        with atomic_dir(out, EXPORT_STAGE, field) as tmp:
            save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": spec["format"]})
            source = {"run": run_dir.name, "checkpoint": ckpt.name, "step": found.state["step"]}
            (tmp / CONFIG_FILE).write_text(json.dumps({**spec, "source": source}, indent=1) + "\n")
    print(f"exported {run_dir.name} ({ckpt.name}) -> {out}")
    return out


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The exported student (eval mode) from a directory written by `export_run` (or its model.safetensors)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    if not (directory / CONFIG_FILE).is_file() or not (directory / MODEL_FILE).is_file():
        raise AmoeError(
            f"{directory}: not an exported student (needs {CONFIG_FILE} and {MODEL_FILE}); run `amoe export`"
        )
    student, _ = build_from_spec(json.loads((directory / CONFIG_FILE).read_text()))
    student.load_state_dict(load_file(str(directory / MODEL_FILE)))
    return student.to(device).eval()


@register_model
def amoe_student(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None, **kwargs):  # noqa: ANN201
    """timm entry point: `timm.create_model("amoe_student", pretrained=True, pretrained_cfg_overlay=dict(file=DIR))`."""
    file = (pretrained_cfg_overlay or {}).get("file") or kwargs.pop("file", None)
    if not pretrained or not file:
        raise AmoeError("amoe_student is built from an export: pretrained=True, pretrained_cfg_overlay=dict(file=DIR)")
    return load_pretrained(file, kwargs.pop("device", "cpu"))


def export_siglino(params: Params, run: str, out: str | Path | None = None) -> Path:
    """`amoe export RUN --format siglino`: the run's newest checkpoint in the released SigLino format
    (checkpoint.pt + config.json, loadable by the release's `SigLino(SigLinoArgs(**config))`); default
    runs/<run>/export-siglino. The same output rules as `export_run`: only an absent, empty or earlier export
    directory is replaced, as a whole."""
    from amoe_core.models.siglino import save

    run_dir = resolve_run(params, run)
    found = newest_weights(run_dir / "checkpoints")
    if found is None:
        raise AmoeError(f"run {run_dir} has no complete checkpoint to export; train it first")
    student, _ = build_from_spec(json.loads((run_dir / STUDENT_SPEC).read_text()))
    student.load_state_dict(found.model)
    field = "--out" if out is not None else "export"
    out = Path(out) if out is not None else run_dir / "export-siglino"
    inputs = {"checkpoint": found.path, "run spec": run_dir / STUDENT_SPEC}
    with claim_outputs({field: out}, inputs, owner=EXPORT_STAGE):
        with atomic_dir(out, EXPORT_STAGE, field) as tmp:
            save(student, tmp)
    print(f"exported {run_dir.name} ({found.path.name}) in the SigLino release format -> {out}")
    return out
