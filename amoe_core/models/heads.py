"""Per-teacher adaptor heads: the student's native features -> each teacher's PHI-S-normalised feature space.

AMoE (arXiv 2512.20157): one adaptor per teacher, Linear -> LayerNorm -> GELU -> Linear, for the summary and for the
patch tokens (and the registers when the teacher has them, e.g. DINOv3). For a SigLIP2-style teacher (one that has a
pooling head instead of a CLS token), the student's summary is produced by a frozen copy of the teacher's
attention-pooling head applied to the student's SigLIP2 patch tokens.

That head was trained on *raw* teacher tokens, while our patch adaptor predicts PHI-S-normalised tokens (the
training targets). So the summary path is: adapted patches -> inverse PHI-S (patches) -> frozen head -> PHI-S
(summary). The inverse makes the head see tokens in the distribution it knows; the final PHI-S puts the summary in
the same normalised space as its target, so its loss is weighted like every other term. Both maps are linear, so
gradients reach the patch adaptor and the backbone unchanged in direction, only rescaled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from amoe_core.models.packed_attention import segment_count
from amoe_core.models.phis import PhiS
from amoe_core.models.teachers.base import TeacherOutput


@dataclass
class TeacherDims:
    """What the student needs to know about a teacher to build its heads."""

    dim: int
    num_registers: int = 0
    summary_head: nn.Module | None = None  # frozen pooling head(tokens [n, N, D], mask [n, N]) -> [n, D]

    @classmethod
    def of(cls, teacher: nn.Module) -> TeacherDims:
        return cls(teacher.dim, teacher.num_registers, getattr(teacher, "summary_head", None))


class Adaptor(nn.Sequential):
    """Linear -> LayerNorm -> GELU -> Linear (the AMoE / RADIO adaptor MLP)."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out))


class TeacherHead(nn.Module):
    """Adaptors for one teacher plus its PHI-S normalisers (fitted by the training loop, stored with the student)."""

    def __init__(self, dim: int, hidden: int, teacher: TeacherDims) -> None:
        super().__init__()
        self.dim, self.num_registers = teacher.dim, teacher.num_registers
        self.patches = Adaptor(dim, hidden, teacher.dim)
        if teacher.summary_head is not None:
            self.summary = None
            self.summary_head = copy.deepcopy(teacher.summary_head)  # frozen; the student carries its own copy
            for p in self.summary_head.parameters():
                p.requires_grad_(False)
        else:
            self.summary, self.summary_head = Adaptor(dim, hidden, teacher.dim), None
        self.registers = Adaptor(dim, hidden, teacher.dim) if teacher.num_registers else None
        # Registers are not PHI-S normalised (AMoE: DINOv3 register targets stay raw).
        self.phis_summary, self.phis_patches = PhiS(teacher.dim), PhiS(teacher.dim)

    def forward(self, summary: Tensor, patches: Tensor, registers: Tensor, token_image_id: Tensor) -> TeacherOutput:
        """summary [n, d], patches [T, d], registers [n, R, d] (native) -> teacher-space TeacherOutput."""
        y_patches = self.patches(patches)
        if self.summary_head is None:
            y_summary = self.summary(summary)
        else:
            y_summary = self.pooled_summary(y_patches, token_image_id, summary.shape[0])
        y_regs = None
        if self.registers is not None:
            y_regs = self.registers(registers[:, : self.num_registers])
        return TeacherOutput(summary=y_summary, patches=y_patches, registers=y_regs)

    def pooled_summary(self, y_patches: Tensor, token_image_id: Tensor, n: int) -> Tensor:
        """Frozen pooling head over each image's own tokens (raw teacher space), then PHI-S (see module doc)."""
        raw = self.phis_patches.inverse(y_patches)
        counts = segment_count(token_image_id, n)
        start = torch.cumsum(counts, 0) - counts  # canonical order: each image's tokens are contiguous
        pos = torch.arange(raw.shape[0], device=raw.device) - start[token_image_id]
        width = int(counts.max()) if n else 0
        tokens = raw.new_zeros(n, width, raw.shape[1]).index_put((token_image_id, pos), raw)
        mask = torch.zeros(n, width, dtype=torch.bool, device=raw.device).index_put(
            (token_image_id, pos), torch.ones_like(pos, dtype=torch.bool)
        )
        return self.phis_summary(self.summary_head(tokens, mask))

    @torch.no_grad()
    def normalize(self, target: TeacherOutput) -> TeacherOutput:
        """A raw teacher output -> the normalised training target (registers stay raw)."""
        return TeacherOutput(
            summary=self.phis_summary(target.summary),
            patches=self.phis_patches(target.patches),
            registers=target.registers,
        )

    def denormalize(self, out: TeacherOutput) -> TeacherOutput:
        """Student adaptor outputs -> raw teacher space (for fidelity evaluation)."""
        return TeacherOutput(
            summary=self.phis_summary.inverse(out.summary),
            patches=self.phis_patches.inverse(out.patches),
            registers=out.registers,
        )
