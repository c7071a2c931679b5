"""A trained student from our own formats, as a `Student` in eval mode (the release's format: amoe_core.models.release.siglino).

- a distill run directory (`runs/<run>`): `student.json` (written by training, `student_spec`) and the run's newest
  complete checkpoint (amoe_core.checkpoints): `load_student(run_dir)`;
- an `amoe export` directory: `config.json` (the same spec plus where the weights came from) and `model.safetensors`:
  `load_pretrained(dir)`, or, timm-style, once this module is imported (it registers the name):

    timm.create_model("amoe_student", pretrained=True, pretrained_cfg_overlay=dict(file="runs/demo/export"))

Nothing else is needed to rebuild the student: no teacher checkpoints, no params.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.models import register_model
from torch import nn

from amoe_core.checkpoints import MODEL_FILE, newest_weights
from amoe_core.config.student import StudentConfig
from amoe_core.errors import AmoeError
from amoe_core.models.heads import TeacherDims
from amoe_core.models.student import Student, build_student
from amoe_core.models.teachers.siglip2 import summary_head

STUDENT_SPEC = "student.json"  # in a run directory
EXPORT_CONFIG = "config.json"  # in an export directory: the spec plus its source
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
    return summary_head({k: v for k, v in spec["config"].items() if k not in ("model_type", "transformers_version")})


def build_from_spec(spec: dict[str, Any]) -> tuple[Student, dict[str, TeacherDims]]:
    """(untrained student, teacher dims) from a `student_spec` dict."""
    if spec.get("format") != SPEC_FORMAT:
        raise AmoeError(f"{STUDENT_SPEC}: format {spec.get('format')!r} is not {SPEC_FORMAT!r}")
    dims = {
        name: TeacherDims(t["dim"], t["num_registers"], _summary_head(t["summary_head"]), t.get("kind"))
        for name, t in spec["teachers"].items()
    }
    student = build_student(StudentConfig(**spec["student"]), dims, spec["max_images_per_seq"])
    return student, dims


def load_student(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Student, dict[str, TeacherDims], dict[str, dict[str, nn.Module]]]:
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


def is_export(path: Path) -> bool:
    """A directory (or its model.safetensors) written by `amoe export` in our own format."""
    directory = path if path.is_dir() else path.parent
    config = directory / EXPORT_CONFIG
    if not (directory / MODEL_FILE).is_file() or not config.is_file():
        return False
    try:
        return str(json.loads(config.read_text()).get("format", "")).startswith("amoe-student/")
    except json.JSONDecodeError:
        return False


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Student:
    """The exported student (eval mode) from a directory written by `amoe export` (or its model.safetensors)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    if not (directory / EXPORT_CONFIG).is_file() or not (directory / MODEL_FILE).is_file():
        raise AmoeError(
            f"{directory}: not an exported student (needs {EXPORT_CONFIG} and {MODEL_FILE}); run `amoe export`"
        )
    student, _ = build_from_spec(json.loads((directory / EXPORT_CONFIG).read_text()))
    student.load_state_dict(load_file(str(directory / MODEL_FILE)))
    return student.to(device).eval()


@register_model
def amoe_student(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None, **kwargs):  # noqa: ANN201
    """timm entry point: `timm.create_model("amoe_student", pretrained=True, pretrained_cfg_overlay=dict(file=DIR))`."""
    file = (pretrained_cfg_overlay or {}).get("file") or kwargs.pop("file", None)
    if not pretrained or not file:
        raise AmoeError("amoe_student is built from an export: pretrained=True, pretrained_cfg_overlay=dict(file=DIR)")
    return load_pretrained(file, kwargs.pop("device", "cpu"))
