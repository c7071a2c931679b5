"""Released SigLino checkpoints (tiiuae/amoe): load them into our student, run them with the release's calling
convention, and write our students in the release's format.

- `load(checkpoint, config)`: a released `.pt` state dict (read with weights_only=True), a safetensors file with the
  same keys, a directory written by `save`, or our own `amoe export` directory (its model.safetensors); `config` is
  a released config name (`siglino-0.3B`, ...), one of ours (`siglino-moe-0.3B`, ...) or a `config.json` with the
  release's `SigLinoArgs` fields (default: the `config.json` beside the checkpoint, else the released file name's
  config, e.g. amoe-0.3B.pt -> siglino-0.3B). Returns a `SigLino` whose `forward(pixel_values, padding_mask=,
  spatial_shapes=)` returns the release's dict {"patch_features": {...}, "summary_features": {...}} with keys dinov3 / siglip2 / siglino.
- `save(student, dir)`: `checkpoint.pt` + `config.json` that the release's `SigLino(SigLinoArgs(**config))` loads
  with a strict `load_state_dict`.
- `init_student(student, path)`: start a training student from released weights (`student.init`).

The config mapping is amoe_core.models.release.config, the state-dict mapping amoe_core.models.release.weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from amoe_core.config.student import StudentArch
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path, atomic_write_json
from amoe_core.models.heads import TeacherDims
from amoe_core.models.release.config import RELEASE_FILES, args_from_arch, resolve_config
from amoe_core.models.release.weights import CHECKPOINT_FILE, from_release, map_head, read_state, roles_of, to_release
from amoe_core.models.student import Student
from amoe_core.models.trained import is_export, load_pretrained

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # SigLinoArgs beside the checkpoint


class SigLino(nn.Module):
    """Our student with the release's calling convention (inputs of its image processor, its output dict)."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student
        self.roles = roles_of(student)

    def forward(
        self, pixel_values: Tensor, padding_mask: Tensor | None = None, spatial_shapes: Tensor | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """pixel_values [N, L, 3*P*P] (normalised, row-major patches of each image first, then padding),
        padding_mask [N, L] (1 = real patch), spatial_shapes [N, 2] (rows, cols)."""
        n, length, _ = pixel_values.shape
        dev = pixel_values.device
        if spatial_shapes is None:
            raise AmoeError("SigLino.forward needs spatial_shapes [N, 2] (patch rows, cols of each image)")
        if padding_mask is None:
            padding_mask = torch.ones(n, length, device=dev)
        real = padding_mask.bool()
        counts = real.sum(1)
        if not torch.equal(counts, spatial_shapes.prod(1).to(counts)):
            raise AmoeError("SigLino.forward: padding_mask must mark exactly rows*cols real patches per image")
        idx = torch.arange(length, device=dev)
        cols = spatial_shapes[:, 1:2].to(dev)
        coords = torch.stack([idx // cols, idx % cols], -1) * real[..., None]
        image_id = torch.where(real, torch.arange(n, device=dev)[:, None], -1)
        out = self.student.encode(pixel_values, coords, image_id, spatial_shapes.to(dev))
        summary = {"siglino": out.summary}
        patches = {"siglino": self._unflatten(out.patches, real)}
        for role, name in self.roles.items():
            summary[role] = out.teachers[name].summary
            patches[role] = self._unflatten(out.teachers[name].patches, real)
        return {"patch_features": patches, "summary_features": summary}

    @staticmethod
    def _unflatten(tokens: Tensor, real: Tensor) -> Tensor:
        """Canonical real tokens [T, D] -> [N, L, D] with zeros at padded positions."""
        return tokens.new_zeros(*real.shape, tokens.shape[-1]).index_put((real,), tokens)


def release_student(arch: StudentArch, dims: dict[str, int]) -> Student:
    """An untrained student with the release's two teachers (siglip2 with its pooling head, dinov3)."""
    teachers = {
        "siglip2": TeacherDims(dims["siglip2"], 0, map_head(dims["siglip2"]), "siglip2"),
        "dinov3": TeacherDims(dims["dinov3"], 0, None, "dinov3"),
    }
    return Student(arch, teachers)


def load(checkpoint: str | Path, config: str | Path | None = None, device: str | torch.device = "cpu") -> SigLino:
    """A released SigLino checkpoint as our student (eval mode); see the module docstring."""
    path = Path(checkpoint)
    if is_export(path):  # our own export (`amoe export`): our key names, the architecture in its config
        return SigLino(load_pretrained(path, device)).eval()
    if config is None:
        config = (path if path.is_dir() else path.parent) / CONFIG_FILE
        if not config.is_file() and path.name in RELEASE_FILES:
            config = RELEASE_FILES[path.name]
        elif not config.is_file():
            raise AmoeError(f"SigLino checkpoint {path}: no {CONFIG_FILE} beside it; pass a config name or path")
    state = read_state(path)
    arch, dims = resolve_config(config)
    student = release_student(arch, dims)
    from_release(state, student, strict=True)
    return SigLino(student).to(device).eval()


def save(student: Student | SigLino, directory: str | Path) -> Path:
    """Write `checkpoint.pt` (release state dict) and `config.json` (SigLinoArgs) into `directory`."""
    model = student.student if isinstance(student, SigLino) else student
    state = to_release(model)
    roles = roles_of(model)
    dims = {role: int(model.adapters[name].fc1.out_features) for role, name in roles.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / CHECKPOINT_FILE) as tmp:
        torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
    atomic_write_json(directory / CONFIG_FILE, args_from_arch(model.arch, dims))
    return directory


def init_student(student: Student, checkpoint: str | Path) -> None:
    """`student.init`: released weights into a training student; new teachers' adapters start fresh."""
    fresh = from_release(read_state(checkpoint), student, strict=False)
    log.info("student initialised from %s%s", checkpoint, f"; fresh adapters: {fresh}" if fresh else "")
