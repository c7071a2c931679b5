"""What a distillation run is built from, in one place: teachers, student (+ PHI-S fit), optimizer, loss, loader,
DDP wrapping. distill.run() composes these; the benchmark and the tests build the same pieces through them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from amoe_core.data.loader import build_loader
from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_path
from amoe_core.launch.distributed import DistInfo, broadcast_module_state
from amoe_core.losses.distill_loss import DistillLoss
from amoe_core.models.heads import TeacherDims
from amoe_core.models.release.siglino import init_student
from amoe_core.models.student import Student, build_student
from amoe_core.models.teachers.base import Teacher, TeacherOutput
from amoe_core.models.teachers.loader import load_teacher

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

PHIS_FILE = "phis.safetensors"


def load_teachers(params: Params, device: torch.device) -> dict[str, Teacher]:
    return {spec.name: load_teacher(spec, device) for spec in params.teachers}  # frozen by load_teacher


def teacher_dims(teachers: dict[str, Teacher]) -> dict[str, TeacherDims]:
    return {name: TeacherDims.of(t) for name, t in teachers.items()}


def build(params: Params, teachers: dict[str, Teacher], device: torch.device) -> Student:
    """The student with one head per teacher; initialised from distill.seed on every rank (DDP broadcasts anyway),
    then from released SigLino weights when `student.init` is set (new teachers' adapters keep their fresh init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.distill.seed)
        student = build_student(params.student, teacher_dims(teachers), params.packing.max_images_per_seq)
    if params.student.init is not None:
        require_path("student.init", params.student.init, "SigLino checkpoint")
        init_student(student, params.student.init)
    return student.to(device)


@torch.no_grad()
def teacher_outputs(teachers: dict[str, Teacher], batch: PackedBatch, packed: bool = True) -> dict[str, TeacherOutput]:
    """Every teacher's raw outputs for the batch's images: SigLIP2 / DINOv3 in one forward over the step's packed
    sequences, other kinds (and all of them with `packed=False`, the benchmark's baseline) per image size."""
    if not packed:
        return {name: t(batch.images, batch.image_sizes) for name, t in teachers.items()}
    return {name: t.forward_packed(batch) for name, t in teachers.items()}


@torch.no_grad()
def fit_phis(
    student: Student, targets: Callable[[PackedBatch], dict[str, TeacherOutput]], batches: Any, samples: int
) -> dict[str, int]:
    """Fit each teacher's PHI-S normalisers (summary and patches separately) on teacher features (`targets`: the
    teachers, or a teacher cache) of the first batches of the stream until `samples` summaries are seen (Ranzinger
    et al., PHI-S). Returns the sample sizes."""
    teachers = list(student.phis)
    summaries: dict[str, list[torch.Tensor]] = {n: [] for n in teachers}
    patches: dict[str, list[torch.Tensor]] = {n: [] for n in teachers}
    seen = 0
    device = next(student.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        for name, out in targets(batch).items():
            summaries[name].append(out.summary.float().cpu())
            patches[name].append(out.patches.float().cpu())
        seen += batch.n_images
        if seen >= samples:
            break
    if seen < 2:
        raise AmoeError(f"PHI-S needs at least 2 images to fit, the training stream gave {seen}")
    gen = torch.Generator().manual_seed(0)
    for name in teachers:
        s, p = torch.cat(summaries[name]), torch.cat(patches[name])
        p = p[torch.randperm(p.shape[0], generator=gen)[: max(samples, 4 * s.shape[0])]]
        student.phis[name].summary.fit(s.to(device))
        student.phis[name].patches.fit(p.to(device))
    return {"images": seen}


def save_phis(student: Student, run_path: Path) -> None:
    """PHI-S buffers of every teacher beside the run (also inside each checkpoint's weights)."""
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, pair in student.phis.items()
               for k, v in pair.state_dict().items()}  # fmt: skip
    with atomic_path(Path(run_path) / PHIS_FILE) as tmp:
        save_file(tensors, str(tmp))


def optimizer(params: Params, student: nn.Module) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the prefix tokens (1-D tensors) - the usual ViT recipe."""
    decay, no_decay = [], []
    for p in student.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": params.distill.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.distill.lr, betas=(0.9, 0.999))


def wrap(student: nn.Module, info: DistInfo, compile_model: bool = False) -> nn.Module:
    """DDP when there are several processes; torch.compile on request."""
    broadcast_module_state(student)  # rank 0's weights and buffers (PHI-S fit, MoE biases) everywhere
    model: nn.Module = student
    if compile_model:
        model = torch.compile(model)
    if info.distributed:
        model = DDP(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            # MoE selection biases are updated identically on every rank from all-reduced loads; rebroadcasting
            # buffers each forward would overwrite the per-rank load counters during gradient accumulation
            broadcast_buffers=False,
            # experts that receive no token in a step, and heads a teacher does not use, get no gradient
            find_unused_parameters=True,
        )
    return model


def loader(params: Params, info: DistInfo, epoch: int, start_step: int) -> Any:
    return build_loader(
        params.packing,
        params.distill.shards,
        params.distill.selection,
        params.distill.seed,
        info.rank,
        info.world_size,
        epoch=epoch,
        start_step=start_step,
    )


def targets_fn(teachers: dict[str, Teacher]):  # noqa: ANN201
    """batch -> raw teacher outputs (teachers frozen, no graph); PHI-S is applied inside the loss."""

    def fn(batch: PackedBatch) -> dict[str, TeacherOutput]:
        return teacher_outputs(teachers, batch)

    return fn


def loss(params: Params, device: torch.device, student: Student):  # noqa: ANN201
    """(student output, raw targets, batch) -> named terms; global-batch aware under torch.distributed.

    The student's adapter outputs and the teachers' targets both go through the student's fitted PHI-S before the
    feature losses (amoe_core.models.student: PHI-S balances the losses but is no part of the model)."""
    fn = DistillLoss(params.loss, params.teachers).to(device)

    def terms(out: Any, targets: dict[str, TeacherOutput], batch: PackedBatch) -> dict[str, torch.Tensor]:
        normalised = replace(out, teachers=student.normalize(out.teachers))
        return fn(normalised, student.normalize(targets), batch.token_image_id)

    return terms
