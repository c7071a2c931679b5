"""The released SigLino configs (tiiuae/amoe `SigLinoArgs`, config.json) <-> our `StudentArch`, and the release's
config names (amoe_core.models.release.siglino loads and writes the checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amoe_core.config.student import ARCHS, StudentArch
from amoe_core.errors import AmoeError

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
