"""Released SigLino checkpoints (tiiuae/amoe): load them into our student, run them with the release's calling
convention, and write our students in the release's format.

- `load(checkpoint, config)`: a released `.pt` state dict (read with weights_only=True), a safetensors file with the
  same keys, a directory written by `save`, or our own `amoe export` directory (its model.safetensors); `config` is a released config name (`siglino-0.3B`, ...), one of ours
  (`siglino-moe-0.3B`, ...) or a `config.json` with the release's `SigLinoArgs` fields (default: the `config.json`
  beside the checkpoint, else the released file name's config, e.g. amoe-0.3B.pt -> siglino-0.3B). Returns a `SigLino` whose `forward(pixel_values, padding_mask=, spatial_shapes=)` returns
  the release's dict {"patch_features": {...}, "summary_features": {...}} with keys dinov3 / siglip2 / siglino.
- `save(student, dir)`: `checkpoint.pt` + `config.json` that the release's `SigLino(SigLinoArgs(**config))` loads
  with a strict `load_state_dict`.
- `init_student(student, path)`: start a training student from released weights (`student.init`).

Names: ours equal the release's except the experts (one module per expert here, stacked [E, ...] tensors there),
the adapters (`adapters.<teacher>` here, `<role>_adapter` there) and the pooling head (`summary_heads.<teacher>.head`
here, `siglip2_multihead_attention_pooling_head` there). The release knows two teacher roles, siglip2 and dinov3: a
teacher fills a role when it has that name, or else is the only teacher of that kind. The release's frozen
`layer_norm_dinov3` is never used by its forward; it is carried through unchanged (or written as LayerNorm's init).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from amoe_core.errors import AmoeError
from amoe_core.io import atomic_path, atomic_write_json
from amoe_core.models.heads import TeacherDims
from amoe_core.models.registry import ARCHS, StudentArch
from amoe_core.models.student import Student

log = logging.getLogger(__name__)

CHECKPOINT_FILE, CONFIG_FILE = "checkpoint.pt", "config.json"
ROLES = ("siglip2", "dinov3")  # the release's teachers, in its config order
RELEASE_NAMES = {  # the release's config names -> ours
    "siglino-0.3B": "siglino-moe-0.3B",
    "siglino-0.15B": "siglino-moe-0.15B",
    "dense-0.6B": "siglino-0.6B",
    "dense-70M": "siglino-70M",
    "dense-30M": "siglino-30M",
}
RELEASE_FILES = {  # the released checkpoint files -> their config names
    "amoe-0.3B.pt": "siglino-0.3B",
    "amoe-0.15B.pt": "siglino-0.15B",
    "dense-0.6B.pt": "dense-0.6B",
    "dense-70M.pt": "dense-70M",
    "dense-30M.pt": "dense-30M",
}
RELEASE_TEACHER_DIMS = {"siglip2": 1152, "dinov3": 1024}  # SigLIP2 So400m, DINOv3 ViT-L
MAP_HEADS, MAP_HIDDEN, MAP_EPS = 16, 4304, 1e-5  # the release's pooling head, whatever the SigLIP2 width
MAP_PREFIX, EXTRA_KEYS = (
    "siglip2_multihead_attention_pooling_head.",
    ("layer_norm_dinov3.weight", "layer_norm_dinov3.bias"),
)
_EXPERT = re.compile(r"^(layers\.\d+\.moe\.experts)\.(\d+)\.(w[123])\.weight$")


# ------------------------------------------------------------------------------------------------------ configs
def arch_from_args(args: dict[str, Any]) -> tuple[StudentArch, dict[str, int]]:
    """A release `SigLinoArgs` dict -> (our arch, {role: teacher dim}); unsupported settings are clear errors."""
    moe = args.get("moe_args") or {}

    def need(ok: bool, field: str, what: str) -> None:
        if not ok:
            raise AmoeError(f"SigLino config: {field} = {args.get(field, moe.get(field))!r} is not supported ({what})")

    need(args.get("n_kv_heads") in (None, args["n_heads"]), "n_kv_heads", "grouped-query attention: use n_heads")
    need(args.get("channel_size", 3) == 3 and args.get("temporal_patch_size", 1) == 1, "channel_size", "RGB images")
    need(args.get("enable_3d_rope", True), "enable_3d_rope", "the golden 2D RoPE is always on")
    need(args.get("activation", "silu") == "silu", "activation", "SwiGLU experts")
    dense = args.get("first_n_layers_dense", 0) >= args["n_layers"] or moe.get("num_experts", 0) == 0
    if not dense:
        need(moe.get("num_shared_experts", 0) == 0, "num_shared_experts", "released models have none")
        need(moe.get("score_func", "sigmoid") == "sigmoid", "score_func", "sigmoid router")
        need(not moe.get("score_before_experts", False), "score_before_experts", "released models: False")
        need(moe.get("activation", "silu") == "silu", "activation", "SwiGLU experts")
    moe_dim = int(args.get("moe_dim") or 0)
    ffn = int(args.get("ffn_dim") or moe_dim)
    arch = StudentArch(
        depth=int(args["n_layers"]),
        dim=int(args["dim"]),
        heads=int(args["n_heads"]),
        head_dim=int(args.get("head_dim") or args["dim"] // args["n_heads"]),
        patch_size=int(args.get("spatial_patch_size", 16)),
        num_registers=int(args.get("n_storage_tokens", 4)),
        num_experts=0 if dense else int(moe["num_experts"]),
        expert_hidden=moe_dim or ffn,
        top_k=1 if dense else int(moe["top_k"]),
        dense_layers=int(args.get("first_n_layers_dense", 0)),
        ffn_hidden=ffn,
        route_norm=bool(moe.get("route_norm", False)),
        route_scale=float(moe.get("route_scale", 1.0)),
        norm_weights=bool(args.get("parameterized_norm", True)),
        norm_eps=float(args.get("norm_eps", 1e-5)),
        qk_norm=bool(args.get("use_qk_norm", True)),
        rope_min_freq=float(args.get("rope_min_freqs", 1.0)),
        rope_max_freq=float(args.get("rope_max_freqs", 20.0)),
    )
    dims = dict(zip(args.get("teachers", ROLES), args.get("teachers_dim", (1152, 1024)), strict=True))
    return arch, {role: int(dims.get(role, RELEASE_TEACHER_DIMS[role])) for role in ROLES}


def args_from_arch(arch: StudentArch, dims: dict[str, int]) -> dict[str, Any]:
    """Our arch + {role: teacher dim} -> the release's `SigLinoArgs` fields (config.json)."""
    dense_layers = arch.depth if arch.num_experts == 0 else arch.dense_layers
    return {
        "dim": arch.dim,
        "n_layers": arch.depth,
        "n_heads": arch.heads,
        "head_dim": arch.head_dim,
        "n_kv_heads": arch.heads,
        "moe_dim": arch.expert_hidden,
        "moe_args": {
            "num_experts": max(arch.num_experts, 1),
            "num_shared_experts": 0,
            "score_func": "sigmoid",
            "route_norm": arch.route_norm,
            "route_scale": arch.route_scale,
            "score_before_experts": False,
            "top_k": arch.top_k,
            "use_grouped_mm": False,
            "activation": "silu",
        },
        "first_n_layers_dense": dense_layers,
        "ffn_dim": arch.ffn_hidden or None,
        "activation": "silu",
        "channel_size": 3,
        "spatial_patch_size": arch.patch_size,
        "temporal_patch_size": 1,
        "enable_3d_rope": True,
        "rope_theta": 100000.0,  # the 1D half: position 0 for images, so unused
        "rope_min_freqs": arch.rope_min_freq,
        "rope_max_freqs": arch.rope_max_freq,
        "max_seq_len": 8192,
        "norm_eps": arch.norm_eps,
        "use_qk_norm": arch.qk_norm,
        "use_tok_norm": True,
        "parameterized_norm": arch.norm_weights,
        "n_storage_tokens": arch.num_registers,
        "teachers": list(ROLES),
        "teachers_dim": [dims[r] for r in ROLES],
        "use_flex_attn": True,
    }


def resolve_config(config: str | Path) -> tuple[StudentArch, dict[str, int]]:
    """A released or our config name, or a path to a config.json with SigLinoArgs fields."""
    name = str(config)
    if name in RELEASE_NAMES or name in ARCHS:
        return ARCHS[RELEASE_NAMES.get(name, name)], dict(RELEASE_TEACHER_DIMS)
    path = Path(config)
    if not path.is_file():
        known = ", ".join([*RELEASE_NAMES, *ARCHS])
        raise AmoeError(f"SigLino config {name!r}: neither a known name ({known}) nor a config.json file")
    try:
        return arch_from_args(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise AmoeError(f"{path}: not a SigLino config.json ({type(e).__name__}: {e})") from None


def map_head(dim: int) -> nn.Module:
    """The release's frozen SigLIP2 pooling head for SigLIP2 width `dim` (16 heads, MLP 4304, LayerNorm eps 1e-5)."""
    from transformers import Siglip2VisionConfig
    from transformers.models.siglip2.modeling_siglip2 import Siglip2MultiheadAttentionPoolingHead

    from amoe_core.models.teachers.siglip2 import Siglip2SummaryHead

    cfg = Siglip2VisionConfig(
        hidden_size=dim,
        num_attention_heads=MAP_HEADS,
        intermediate_size=MAP_HIDDEN,
        layer_norm_eps=MAP_EPS,
        hidden_act="gelu_pytorch_tanh",
    )
    return Siglip2SummaryHead(Siglip2MultiheadAttentionPoolingHead(cfg))


# ------------------------------------------------------------------------------------------------- state dicts
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


# ---------------------------------------------------------------------------------------------------- the model
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


def _is_amoe_export(path: Path) -> bool:
    """A directory (or its model.safetensors) written by `amoe export` in our own format."""
    directory = path if path.is_dir() else path.parent
    config = directory / CONFIG_FILE
    if not (directory / "model.safetensors").is_file() or not config.is_file():
        return False
    try:
        return str(json.loads(config.read_text()).get("format", "")).startswith("amoe-student/")
    except json.JSONDecodeError:
        return False


def load(checkpoint: str | Path, config: str | Path | None = None, device: str | torch.device = "cpu") -> SigLino:
    """A released SigLino checkpoint as our student (eval mode); see the module docstring."""
    path = Path(checkpoint)
    if _is_amoe_export(path):  # our own export (`amoe export`): our key names, the architecture in its config
        from amoe_core.train.export import load_pretrained

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
