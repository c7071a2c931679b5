"""Any timm model as a frozen teacher, through `forward_features` / `forward_head(pre_logits=True)`.

ViT-style models return `[B, num_prefix_tokens + r*c, D]` (prefix = CLS and `num_reg_tokens` registers); CNNs
return `[B, C, r, c]` feature maps whose stride plays the role of the patch size. Summary = the model's own pooling
(`forward_head(..., pre_logits=True)`: CLS, average or attention pooling, whatever it was trained with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from amoe_core.device import compute_dtype
from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import Teacher, TeacherOutput
from amoe_core.models.teachers.hf import HUB_ID


def _source(name: str, path: str) -> str:
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AmoeError(f"teacher {name!r}: {path!r} has no config.json (save it with timm's save_for_hf)")
        return f"local-dir:{p}"
    if path.startswith("hf-hub:"):
        return path
    if HUB_ID.match(path):
        return f"hf-hub:{path}"
    if timm.is_model(path):
        return path  # a registry name: its pretrained weights are downloaded
    raise AmoeError(
        f"teacher {name!r}: path {path!r} is neither a directory nor a hub id nor a timm model name; fix teachers[].path"
    )


def _create(name: str, source: str) -> nn.Module:
    try:
        try:  # ViTs accept any patch grid with dynamic_img_size; other families do not take the argument
            return timm.create_model(source, pretrained=True, num_classes=0, dynamic_img_size=True)
        except TypeError:
            return timm.create_model(source, pretrained=True, num_classes=0)
    except (RuntimeError, ValueError, KeyError) as e:
        raise AmoeError(
            f"teacher {name!r}: unsupported timm model {source!r}: {str(e).splitlines()[0][:300]}"
        ) from None
    except OSError:
        raise AmoeError(
            f"teacher {name!r}: cannot fetch {source!r} (offline or misspelt); save it to a local directory with "
            "timm's save_for_hf and set teachers[].path to that directory"
        ) from None


class TimmTeacher(Teacher):
    def __init__(self, name: str, model: nn.Module) -> None:
        super().__init__()
        self.name, self.kind, self.model = name, "timm", model
        self.summary_head = None
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))  # type: ignore[assignment]
        self.std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))  # type: ignore[assignment]
        self.dim = int(model.num_features)
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "patch_size"):
            ps = patch_embed.patch_size
            self.patch_size = int(ps[0] if isinstance(ps, tuple | list) else ps)
            self.num_prefix = int(getattr(model, "num_prefix_tokens", 0))
            self.num_registers = int(getattr(model, "num_reg_tokens", 0))
        elif getattr(model, "feature_info", None):
            self.patch_size = int(model.feature_info[-1]["reduction"])
            self.num_prefix = self.num_registers = 0
        else:
            raise AmoeError(f"teacher {name!r}: {type(model).__name__} has neither a patch embedding nor feature_info")
        self.eval()

    @torch.no_grad()
    def forward(self, images: list[Tensor], grid: Tensor | None = None) -> TeacherOutput:
        return self.forward_by_size(images, grid, self._encode)

    def _encode(self, x: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor, int]:
        feats = self.model.forward_features(x)
        pooled = self.model.forward_head(feats, pre_logits=True).float()
        if feats.ndim == 4:  # CNN feature map [B, C, r, c] -> row-major tokens
            feats = feats.flatten(2).transpose(1, 2)
        feats = feats.float()
        if feats.shape[1] != self.num_prefix + rows * cols:
            raise AmoeError(
                f"teacher {self.name!r}: {type(self.model).__name__} returned {feats.shape[1]} tokens for a "
                f"{rows}x{cols} grid (+{self.num_prefix} prefix); it does not give one token per patch"
            )
        return pooled, feats, self.num_prefix


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    model = _create(spec.name, _source(spec.name, spec.path))
    model = model.to(device=device, dtype=compute_dtype(device))  # frozen by loader.load_teacher
    return TimmTeacher(spec.name, model)
