"""`load_teacher(spec)`: the one entry point from a `TeacherSpec` (params.yaml `teachers:`) to a frozen `Teacher`."""

from __future__ import annotations

import torch

from amoe_core.config import TeacherSpec
from amoe_core.errors import AmoeError
from amoe_core.models.teachers import dinov3, hf, siglip2, timm_encoder
from amoe_core.models.teachers.base import Teacher

LOADERS = {"siglip2": siglip2.load, "dinov3": dinov3.load, "hf": hf.load, "timm": timm_encoder.load}


def load_teacher(spec: TeacherSpec, device: torch.device | str = "cpu") -> Teacher:
    """Load a frozen teacher (eval mode, no grad, bf16 on CUDA) from a local directory or a hub id. A kind `hf`
    checkpoint of SigLIP2 loads as kind `siglip2`: its NaFlex inputs need that wrapper."""
    if spec.kind not in LOADERS:
        raise AmoeError(f"teacher {spec.name!r}: unknown kind {spec.kind!r}; kinds: {', '.join(LOADERS)}")
    kind = spec.kind
    if kind == "hf" and hf.model_type(spec).startswith("siglip2"):
        kind = "siglip2"
    return LOADERS[kind](spec, device)
