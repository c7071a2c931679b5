"""Per-teacher heads of the released SigLino student: one `Adapter` per teacher, and for a teacher that summarises
with an attention-pooling head (SigLIP2's MAP head) a frozen copy of that head.

Adapter: Linear(dim -> T) -> LayerNorm(T) -> GELU -> Linear(T -> T, no bias), shared by the CLS token, the patch
tokens and (for the register loss) the register tokens. It predicts the teacher's *raw* features: the released
inference graph has no PHI-S, and the SigLIP2 summary is the frozen MAP head applied to the adapter's output over
CLS + registers + patches of each image, which only makes sense in the teacher's own space.

PHI-S enters only the loss (amoe_core.models.student.Student.normalize): `PhiSPair` holds the fitted normalisers
of one teacher's summary and patch features, applied alike to the student's prediction and the teacher's target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor, nn

from amoe_core.models.phis import PhiS
from amoe_core.models.teachers.base import TeacherOutput


@dataclass
class TeacherDims:
    """What the student needs to know about a teacher to build its head."""

    dim: int
    num_registers: int = 0
    summary_head: nn.Module | None = None  # frozen pooling head(tokens [n, N, D], mask [n, N]) -> [n, D]
    kind: str | None = None  # the teacher's kind (dinov3, siglip2, ...): matches released adapters by kind

    @classmethod
    def of(cls, teacher: nn.Module) -> TeacherDims:
        return cls(teacher.dim, teacher.num_registers, getattr(teacher, "summary_head", None), teacher.kind)


class Adapter(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear (no bias): the released per-teacher adapter."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, out)
        self.norm = nn.LayerNorm(out)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out, out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.fc1.weight, std=0.01)
        nn.init.trunc_normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc1.bias)
        self.norm.reset_parameters()


def frozen_copy(head: nn.Module) -> nn.Module:
    """The student's own frozen copy of a teacher's pooling head (gradients still flow to its inputs)."""
    head = copy.deepcopy(head)
    for p in head.parameters():
        p.requires_grad_(False)
    return head


class PhiSPair(nn.Module):
    """PHI-S normalisers of one teacher's summary and patch features (registers stay raw, as in AMoE)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.summary, self.patches = PhiS(dim), PhiS(dim)

    def forward(self, out: TeacherOutput) -> TeacherOutput:
        return TeacherOutput(self.summary(out.summary), self.patches(out.patches), out.registers)
