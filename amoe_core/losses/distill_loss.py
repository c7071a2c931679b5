"""The distillation objective: per-teacher feature losses plus a relational term, as named scalar terms.

For each teacher t (weights from params.yaml `teachers[i]`): summary_weight * L_summary + patch_weight * L_patch
(+ register_weight * L_registers when both sides have registers), each a mean over the images of the global batch
of per-image MSEs (amoe_core.losses.features). Relational term (`loss.relational`: arkd | rkd | none, weight
`loss.relational_weight`): applied per teacher between the student's adapted summary and that teacher's summary,
over the global batch, and summed over teachers. Optional MoE auxiliary balance loss (`loss.balance_aux_weight`).

Distributed scaling (so that DDP's gradient averaging gives exactly the single-process gradient of the global loss):
- feature terms: each rank returns world_size * sum(local per-image losses) / n_global_images;
- relational terms: summaries are all-gathered (the student's with autograd); every rank computes the same global
  loss, and all_gather's backward sums the gradient of every rank's copy, i.e. world_size * the true gradient of
  the local summaries; DDP's division by world_size makes it exact. No extra factor is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

from amoe_core.config.loss import LossConfig
from amoe_core.config.teachers import TeacherSpec
from amoe_core.losses.features import (
    global_image_count,
    global_image_mean,
    is_distributed,
    patch_per_image,
    registers_per_image,
    summary_per_image,
)
from amoe_core.losses.relational import arkd_loss, rkd_loss
from amoe_core.models.teachers.base import TeacherOutput


def gather_rows(x: Tensor, group: dist.ProcessGroup | None = None, differentiable: bool = True) -> Tensor:
    """Concatenate [n_r, ...] tensors of every rank (n_r may differ) in rank order; gradients flow back if asked."""
    if not is_distributed(group):
        return x
    world = dist.get_world_size(group)
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes_l = [int(s) for s in sizes]
    pad = max(sizes_l) - x.shape[0]
    xp = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x
    if differentiable:
        parts = dist_nn.all_gather(xp.contiguous(), group=group)
    else:
        parts = [torch.empty_like(xp) for _ in range(world)]
        dist.all_gather(parts, xp.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_l, strict=True)])


class DistillLoss(nn.Module):
    def __init__(
        self, loss_cfg: LossConfig, teacher_specs: Sequence[TeacherSpec], group: dist.ProcessGroup | None = None
    ):
        super().__init__()
        self.cfg, self.specs, self.group = loss_cfg, {t.name: t for t in teacher_specs}, group

    def forward(self, student: object, targets: dict[str, TeacherOutput], token_image_id: Tensor) -> dict[str, Tensor]:
        """student: a StudentOutput (uses .teachers and .aux_loss) and targets, both PHI-S-normalised (`Student.normalize`
        on each); token_image_id [T] canonical order. Returns named scalar terms incl. total."""
        preds: dict[str, TeacherOutput] = student.teachers  # type: ignore[attr-defined]
        n = next(iter(preds.values())).summary.shape[0]
        device = token_image_id.device
        n_global = global_image_count(n, device, self.group)
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        relational = torch.zeros((), device=device)
        for name, target in targets.items():
            if name not in preds:
                raise KeyError(f"no student head for teacher {name!r}; heads: {list(preds)}")
            spec, pred = self.specs[name], preds[name]
            terms[f"{name}/summary"] = global_image_mean(
                summary_per_image(pred.summary, target.summary), n_global, self.group
            )
            terms[f"{name}/patch"] = global_image_mean(
                patch_per_image(pred.patches, target.patches, token_image_id, n), n_global, self.group
            )
            total = total + spec.summary_weight * terms[f"{name}/summary"] + spec.patch_weight * terms[f"{name}/patch"]
            if spec.register_weight > 0 and pred.registers is not None and target.registers is not None:
                terms[f"{name}/registers"] = global_image_mean(
                    registers_per_image(pred.registers, target.registers), n_global, self.group
                )
                total = total + spec.register_weight * terms[f"{name}/registers"]
            if self.cfg.relational != "none":
                fn = arkd_loss if self.cfg.relational == "arkd" else rkd_loss
                s = gather_rows(pred.summary, self.group, differentiable=True)
                t = gather_rows(target.summary.detach(), self.group, differentiable=False)
                terms[f"{name}/relational"] = fn(s, t)
                relational = relational + terms[f"{name}/relational"]
        if self.cfg.relational != "none":
            terms["relational"] = relational
            total = total + self.cfg.relational_weight * relational
        aux = getattr(student, "aux_loss", None)
        if aux is not None and self.cfg.balance_aux_weight > 0:
            terms["balance_aux"] = aux
            total = total + self.cfg.balance_aux_weight * aux
        terms["total"] = total
        return terms
