"""DINOv3 (`DINOv3ViTModel`) as a frozen teacher: summary = CLS, registers after it, then the patch tokens.

DINOv3 uses RoPE on normalised patch coordinates, so any (even non-square) patch grid works without interpolating
position embeddings; equal-size images run as one batch (`HFTeacher`). Input normalisation: ImageNet mean/std unless
the checkpoint's preprocessor_config.json says otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher
from amoe_core.models.teachers.hf import HFTeacher, load_typed, read_normalisation, resolve_source

MODEL_TYPES = ("dinov3_vit",)


class DINOv3Teacher(HFTeacher):
    """`DINOv3ViTModel` outputs `[CLS, registers (config.num_register_tokens), patches]`; pooler_output is the CLS."""


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    from transformers import DINOv3ViTModel  # transformers: imported when a teacher loads (about a second of start-up)

    model = load_typed(spec, device, DINOv3ViTModel, MODEL_TYPES)
    mean, std = read_normalisation(resolve_source(spec.name, spec.path), (IMAGENET_MEAN, IMAGENET_STD))
    return DINOv3Teacher(spec.name, model, model.config, mean, std, kind="dinov3")
