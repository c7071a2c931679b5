"""The released SigLino state dict (tiiuae/amoe) <-> our student's: key names, stacked experts, teacher roles.

Names: ours equal the release's except the experts (one module per expert here, stacked [E, ...] tensors there),
the adapters (`adapters.<teacher>` here, `<role>_adapter` there) and the pooling head (`summary_heads.<teacher>.head`
here, `siglip2_multihead_attention_pooling_head` there). The release knows two teacher roles, siglip2 and dinov3: a
teacher fills a role when it has that name, or else is the only teacher of that kind. The release's frozen
`layer_norm_dinov3` is never used by its forward; it is carried through unchanged (or written as LayerNorm's init).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from amoe_core.errors import AmoeError
from amoe_core.models.release.config import ROLES
from amoe_core.models.student import Student
from amoe_core.models.teachers.siglip2 import summary_head

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
MAP_HEADS, MAP_HIDDEN, MAP_EPS = 16, 4304, 1e-5  # the release's pooling head, whatever the SigLIP2 width
MAP_PREFIX, EXTRA_KEYS = (
    "siglip2_multihead_attention_pooling_head.",
    ("layer_norm_dinov3.weight", "layer_norm_dinov3.bias"),
)
_EXPERT = re.compile(r"^(layers\.\d+\.moe\.experts)\.(\d+)\.(w[123])\.weight$")


def map_head(dim: int) -> nn.Module:
    """The release's frozen SigLIP2 pooling head for SigLIP2 width `dim` (16 heads, MLP 4304, LayerNorm eps 1e-5)."""
    return summary_head(
        dict(
            hidden_size=dim,
            num_attention_heads=MAP_HEADS,
            intermediate_size=MAP_HIDDEN,
            layer_norm_eps=MAP_EPS,
            hidden_act="gelu_pytorch_tanh",
        )
    )


def roles_of(student: Student) -> dict[str, str]:
    """{role: our teacher name} for the release roles this student's teachers fill."""
    out = {}
    for role in ROLES:
        if role in student.adapters:
            out[role] = role
            continue
        same_kind = [n for n, k in student.teacher_kinds.items() if k == role]
        if len(same_kind) == 1:
            out[role] = same_kind[0]
    return out


def to_release(student: Student) -> dict[str, Tensor]:
    """Our student's state -> the release's state dict (exact key set and shapes of SigLino(SigLinoArgs))."""
    roles = roles_of(student)
    missing = [r for r in ROLES if r not in roles]
    if missing:
        raise AmoeError(
            f"the SigLino release format needs a siglip2 and a dinov3 teacher (by name or kind); this student has "
            f"{dict(student.teacher_kinds)}; missing: {', '.join(missing)}"
        )
    sig = roles["siglip2"]
    if sig not in student.summary_heads:
        raise AmoeError(f"teacher {sig!r} fills the siglip2 role but has no pooling head to export")
    head = student.summary_heads[sig]
    fc1 = head.head.mlp.fc1.weight
    if head.head.num_heads != MAP_HEADS or fc1.shape[0] != MAP_HIDDEN:
        raise AmoeError(
            f"teacher {sig!r}'s pooling head has {head.head.num_heads} heads and MLP {fc1.shape[0]}; the release "
            f"format fixes {MAP_HEADS} heads and MLP {MAP_HIDDEN} (SigLIP2 So400m's head)"
        )
    dropped = sorted(set(student.adapters) - set(roles.values()))
    if dropped:
        log.warning("release format: teachers %s have no place in a SigLino checkpoint and are left out", dropped)
    name_of = {name: role for role, name in roles.items()}
    out: dict[str, Tensor] = {}
    experts: dict[str, dict[int, Tensor]] = {}
    for key, value in student.state_dict().items():
        value = value.detach().cpu()
        if key.startswith("phis.") or key.endswith(".pending_load"):
            continue  # training state, not part of the model
        if m := _EXPERT.match(key):
            experts.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = value
        elif key.startswith("adapters."):
            name, rest = key[len("adapters.") :].split(".", 1)
            if name in name_of:
                out[f"{name_of[name]}_adapter.{rest}"] = value
        elif key.startswith("summary_heads."):
            name, rest = key[len("summary_heads.") :].split(".", 1)
            if name == sig:
                out[MAP_PREFIX + rest.removeprefix("head.")] = value
        else:
            out[key] = value
    for key, per_expert in experts.items():
        out[key] = torch.stack([per_expert[e] for e in sorted(per_expert)])
    d = student.adapters[roles["dinov3"]].fc1.out_features
    defaults = {"layer_norm_dinov3.weight": torch.ones(d), "layer_norm_dinov3.bias": torch.zeros(d)}
    for key in EXTRA_KEYS:
        out[key] = student.release_extras.get(key, defaults[key]).clone()
    return out


def from_release(state: dict[str, Tensor], student: Student, strict: bool = True) -> list[str]:
    """Copy a release state dict into `student` (in place). strict: every key of both sides must match. Otherwise
    (training init) parts without a counterpart keep their fresh init, and the pooling head stays the teacher's own
    copy; returns the names of the teachers whose adapters start fresh."""
    roles = roles_of(student)
    ours = student.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in EXTRA_KEYS:
            student.release_extras[key] = value.detach().cpu().clone()
        elif key.startswith(MAP_PREFIX):
            if "siglip2" in roles and roles["siglip2"] in student.summary_heads and strict:
                mapped[f"summary_heads.{roles['siglip2']}.head.{key[len(MAP_PREFIX) :]}"] = value
        elif (m := re.match(r"^(siglip2|dinov3)_adapter\.(.+)$", key)) is not None:
            if m[1] in roles:
                mapped[f"adapters.{roles[m[1]]}.{m[2]}"] = value
        elif re.match(r"^layers\.\d+\.moe\.experts\.w[123]$", key):
            base, w = key.rsplit(".", 1)
            for e in range(value.shape[0]):
                mapped[f"{base}.{e}.{w}.weight"] = value[e]
        else:
            mapped[key] = value
    mismatched = [
        f"{k} {list(v.shape)} vs {list(ours[k].shape)}"
        for k, v in mapped.items()
        if k in ours and v.shape != ours[k].shape
    ]
    if mismatched:
        raise AmoeError(
            f"SigLino checkpoint does not fit this student: {'; '.join(mismatched[:4])} (the architecture must be the "
            "checkpoint's; a teacher that fills a released role, siglip2 or dinov3, must have the released width)"
        )
    unknown = sorted(set(mapped) - set(ours))
    if unknown:
        raise AmoeError(f"SigLino checkpoint has keys this student lacks: {', '.join(unknown[:6])}")
    missing = sorted(
        k for k in set(ours) - set(mapped) if not k.startswith("phis.") and not k.endswith(".pending_load")
    )
    fresh = sorted({k.split(".")[1] for k in missing if k.startswith("adapters.")})
    other = [k for k in missing if not k.startswith(("adapters.", "summary_heads."))]
    if other or (strict and missing):
        raise AmoeError(f"SigLino checkpoint lacks weights of this student: {', '.join((other or missing)[:6])}")
    with torch.no_grad():
        for key, value in mapped.items():
            ours[key].copy_(value)
    return fresh


def read_state(checkpoint: str | Path) -> dict[str, Tensor]:
    """A release state dict from a `.pt` file (weights only), a `.safetensors` file, or a directory from `save`."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise AmoeError(f"SigLino checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise AmoeError(f"SigLino checkpoint {path}: unreadable ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise AmoeError(f"SigLino checkpoint {path}: not a plain state dict of tensors")
    return state
