"""`load_teacher(spec)`: the one entry point from a `TeacherSpec` (params.yaml `teachers:`) to a frozen `Teacher`."""

from __future__ import annotations

import torch

from amoe_core.config.teachers import TeacherSpec
from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import Teacher, freeze
from amoe_core.models.teachers.dinov3 import load as load_dinov3
from amoe_core.models.teachers.hf import load as load_hf
from amoe_core.models.teachers.hf import model_type
from amoe_core.models.teachers.siglip2 import load as load_siglip2
from amoe_core.models.teachers.timm_encoder import load as load_timm

LOADERS = {"siglip2": load_siglip2, "dinov3": load_dinov3, "hf": load_hf, "timm": load_timm}


def load_teacher(spec: TeacherSpec, device: torch.device | str = "cpu") -> Teacher:
    """Load a frozen teacher (eval mode, no grad, bf16 on CUDA) from a local directory or a hub id. A kind `hf`
    checkpoint of SigLIP2 loads as kind `siglip2`: its NaFlex inputs need that wrapper."""
    if spec.kind not in LOADERS:
        raise AmoeError(f"teacher {spec.name!r}: unknown kind {spec.kind!r}; kinds: {', '.join(LOADERS)}")
    kind = spec.kind
    if kind == "hf" and model_type(spec).startswith("siglip2"):
        kind = "siglip2"
    return freeze(LOADERS[kind](spec, device))  # the wrapper's own modules too (e.g. a summary head)
