"""DINOv3 (`DINOv3ViTModel`) as a frozen teacher: summary = CLS, registers after it, then the patch tokens.

DINOv3 uses RoPE on normalised patch coordinates, so any (even non-square) patch grid works without interpolating
position embeddings; equal-size images run as one batch (`HFTeacher`). Input normalisation: ImageNet mean/std unless
the checkpoint's preprocessor_config.json says otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher
from amoe_core.models.teachers.hf import HFTeacher, load_config, load_model, read_normalisation, resolve_source

MODEL_TYPES = ("dinov3_vit",)


class DINOv3Teacher(HFTeacher):
    """`DINOv3ViTModel` outputs `[CLS, registers (config.num_register_tokens), patches]`; pooler_output is the CLS."""


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    from transformers import DINOv3ViTModel

    source = resolve_source(spec.name, spec.path)
    cfg = load_config(spec.name, source)
    if cfg.model_type not in MODEL_TYPES:
        raise AmoeError(
            f"teacher {spec.name!r}: {spec.path!r} holds a {cfg.model_type!r} model, but kind 'dinov3' needs "
            f"one of {list(MODEL_TYPES)}; use kind 'hf' for other transformers encoders"
        )
    model = load_model(spec.name, DINOv3ViTModel, source, device)
    mean, std = read_normalisation(source, (IMAGENET_MEAN, IMAGENET_STD))
    return DINOv3Teacher(spec.name, model, model.config, mean, std, kind="dinov3")
