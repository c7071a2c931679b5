"""Released SigLino checkpoints (tiiuae/amoe): load them into our student, run them with the release's calling
convention, and write our students in the release's format.

- `load(checkpoint, config)`: a released `.pt` state dict (read with weights_only=True), a safetensors file with the
  same keys, a directory written by `save`, or our own `amoe export` directory (its model.safetensors); `config` is
  a released config name (`siglino-0.3B`, ...), one of ours (`siglino-moe-0.3B`, ...) or a `config.json` with the
  release's `SigLinoArgs` fields (default: the `config.json` beside the checkpoint, else the released file name's
  config, e.g. amoe-0.3B.pt -> siglino-0.3B). Returns a `SigLino` whose `forward(pixel_values, padding_mask=,
  spatial_shapes=)` returns the release's dict {"patch_features": {...}, "summary_features": {...}} with keys dinov3 / siglip2 / siglino.
- `save(student, dir)`: `checkpoint.pt` (the release's exact key set) + `config.json` (the release's `SigLinoArgs`
  fields, the layout of its configs). The release loads a named size with `load_siglino_model(path, name)`; any size
  with `SigLino(SigLinoArgs(**{**config, "moe_args": MoEArgs(**config["moe_args"])}))` and a strict
  `load_state_dict` (README, "The student is the released SigLino model"; `SigLinoArgs(**config)` alone fails for
  MoE configs: the release reads `moe_args.num_experts`). `save` logs which of the two a model needs.
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
from amoe_core.models.release.config import (
    RELEASE_FILES,
    arch_differences,
    args_from_arch,
    release_name,
    resolve_config,
)
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
        padding_mask [N, L] (1 = real patch), spatial_shapes [N, 2] (rows, cols); or, as the release accepts too,
        normalised images [N, 3, H, W] (or [N, H, W, 3]) of one size, with no mask and no spatial_shapes."""
        if pixel_values.dim() == 4:
            pixel_values, spatial_shapes = self.patchify(pixel_values)
            padding_mask = None
        pixel_values = pixel_values.to(self.student.img_projector.weight.dtype)  # a model loaded with `dtype=`
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

    def patchify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images [N, 3, H, W] or [N, H, W, 3] -> (patches [N, h*w, 3*P*P], spatial_shapes [N, 2]) exactly as the
        release's `SigLino._patchify`: whole patches only (a remainder is cropped), each patch flattened channel-first
        (c, y, x). Its image processor flattens (y, x, c) instead, so the same image gives other features by the two
        routes, in the release as here; the processor's is the one the models were trained on."""
        if images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        n, c, height, width = images.shape
        p = self.student.arch.patch_size
        h, w = height // p, width // p
        patches = images.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(n, h * w, c * p * p)
        return patches, torch.tensor([[h, w]] * n, device=images.device)

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


def load(
    checkpoint: str | Path,
    config: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> SigLino:
    """A released SigLino checkpoint as our student (eval mode), its weights cast to `dtype` if given (e.g.
    torch.bfloat16, as the release's `load_siglino_model(..., dtype=)`); see the module docstring."""
    path = Path(checkpoint)
    if is_export(path):  # our own export (`amoe export`): our key names, the architecture in its config
        return SigLino(load_pretrained(path, device)).to(dtype=dtype).eval()
    state = read_state(path)
    arch, dims = resolve_config(checkpoint_config(path) if config is None else config)
    student = release_student(arch, dims)
    from_release(state, student, strict=True)
    return SigLino(student).to(device=device, dtype=dtype).eval()


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
    name = release_name(model.arch, dims)
    if name:
        log.info(
            "%s: the release loads it with load_siglino_model(%r, %r)",
            directory,
            str(directory / CHECKPOINT_FILE),
            name,
        )
    else:
        log.info(
            "%s: a custom size: load it in the release with SigLinoArgs and MoEArgs from config.json (README)",
            directory,
        )
    return directory


def checkpoint_config(path: Path) -> str | Path:
    """A checkpoint's own config: the `config.json` beside it (or in its directory), else its released file name's."""
    beside = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if beside.is_file():
        return beside
    if path.name in RELEASE_FILES:
        return RELEASE_FILES[path.name]
    raise AmoeError(
        f"SigLino checkpoint {path}: no {CONFIG_FILE} beside it and not a released file name "
        f"({', '.join(RELEASE_FILES)}); put the config.json it was saved with beside it, or pass a config name"
    )


def init_student(student: Student, checkpoint: str | Path) -> None:
    """`student.init`: released weights into a training student whose architecture must be the checkpoint's own
    (shapes alone cannot tell the 0.3B from the 0.15B, nor route_norm / route_scale / norm_eps apart). The release's
    SigLIP2 pooling head comes along; new teachers' adapters start fresh."""
    path = Path(checkpoint)
    config = checkpoint_config(path)
    arch, _ = resolve_config(config)
    differences = arch_differences(arch, student.arch)
    if differences:
        raise AmoeError(
            f"student.init = {path}: its architecture ({config}) differs from the student's: {'; '.join(differences)}"
            "; set student.name / student.overrides to the checkpoint's"
        )
    fresh = from_release(read_state(path), student, strict=False)
    log.info(
        "student initialised from %s (config %s); %s", path, config,
        f"adapters starting fresh (teachers the release does not know): {fresh}" if fresh else "no adapter starts fresh",
    )  # fmt: skip
