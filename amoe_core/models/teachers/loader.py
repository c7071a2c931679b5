"""`load_teacher(spec)`: one entry point from a `TeacherSpec` (params.yaml `teachers:`) to a frozen `Teacher`."""

from __future__ import annotations

import importlib

import torch

from amoe_core.config import TeacherSpec
from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import Teacher

LOADERS = {
    "siglip2": "amoe_core.models.teachers.siglip2",
    "dinov3": "amoe_core.models.teachers.dinov3",
    "hf": "amoe_core.models.teachers.hf",
    "timm": "amoe_core.models.teachers.timm_encoder",
}


def load_teacher(spec: TeacherSpec, device: torch.device | str = "cpu") -> Teacher:
    """Load a frozen teacher (eval mode, no grad, bf16 on CUDA) from a local directory or a hub id."""
    if spec.kind not in LOADERS:
        raise AmoeError(f"teacher {spec.name!r}: unknown kind {spec.kind!r}; kinds: {', '.join(LOADERS)}")
    teacher = importlib.import_module(LOADERS[spec.kind]).load(spec, device)
    return teacher


def load_teachers(specs: list[TeacherSpec], device: torch.device | str = "cpu") -> dict[str, Teacher]:
    return {spec.name: load_teacher(spec, device) for spec in specs}
