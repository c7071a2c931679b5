"""Any transformers ViT-style vision encoder as a frozen `Teacher`, plus the checkpoint-loading helpers all HF
teachers share (local `save_pretrained` directory or hub id, one clear error offline, bf16 on CUDA). transformers is
imported inside the functions that need it: about a second of start-up that commands which never load a teacher
(`amoe model info`, `amoe export`, the params check) would pay."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from amoe_core.device import compute_dtype
from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Teacher,
    TeacherOutput,
    freeze,
)

# org/name (at most one slash): anything else that is not an existing directory is a typo'd local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (unused text-tower weights are expected)."""
    from transformers.utils import logging as hf_logging  # transformers: imported on use (start-up time)

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def resolve_source(name: str, path: str) -> str:
    """A local `save_pretrained` directory, or a hub id; anything else is a user error."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AmoeError(f"teacher {name!r}: {path!r} has no config.json, so it is not a save_pretrained directory")
        return str(p)
    if p.exists():
        raise AmoeError(f"teacher {name!r}: {path!r} is a file; teachers[].path must be a save_pretrained directory")
    if HUB_ID.match(path):
        return path
    raise AmoeError(
        f"teacher {name!r}: path {path!r} does not exist; run `amoe teachers demo` to create the demo teachers "
        "or set teachers[].path to a save_pretrained directory or a hub id"
    )


@contextlib.contextmanager
def _load_errors(name: str, source: str) -> Iterator[None]:
    """Turn transformers' loading failures into one line that says what to do."""
    try:
        with quiet_transformers():
            yield
    except AmoeError:
        raise
    except OSError as e:
        if Path(source).is_dir():
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AmoeError(f"teacher {name!r}: cannot load weights from {source!r}: {first}") from None
        raise AmoeError(
            f"teacher {name!r}: cannot fetch hub id {source!r} (offline, gated or misspelt); download it on a "
            "machine with internet, save_pretrained it to a directory and set teachers[].path to that directory"
        ) from None
    except (ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AmoeError(f"teacher {name!r}: unsupported model in {source!r}: {first[:300]}") from None


def refuse_pickle_weights(name: str, source: str) -> None:
    """Weights only as a pickle (`pytorch_model.bin`, `.pt`): unpickling can run code, so amoe reads safetensors only;
    said up front in one line instead of transformers' traceback."""
    d = Path(source)
    if d.is_dir() and not any(d.glob("*.safetensors")):
        pickles = sorted(p.name for p in (*d.glob("*.bin"), *d.glob("*.pt"), *d.glob("*.pth")))
        if pickles:
            raise AmoeError(
                f"teacher {name!r}: {source!r} has its weights only as a pickle ({pickles[0]}), which amoe never "
                "unpickles; convert it once where you trust it: from_pretrained(...).save_pretrained(DIR) writes "
                "model.safetensors, then point teachers[].path at DIR"
            )


def refuse_custom_code(name: str, source: str) -> None:
    """A checkpoint whose model type transformers does not know runs its own Python (`auto_map`): never here."""
    from transformers import CONFIG_MAPPING  # transformers: imported on use (start-up time)

    f = Path(source) / "config.json"
    try:
        cfg = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return  # transformers reports an unreadable config itself
    if isinstance(cfg, dict) and cfg.get("auto_map") and cfg.get("model_type") not in CONFIG_MAPPING:
        raise AmoeError(
            f"teacher {name!r}: {source!r} needs custom code (auto_map in config.json, model_type "
            f"{cfg.get('model_type')!r}), which amoe never runs; convert it: review its code, load it once with "
            "trust_remote_code=True, save_pretrained the weights into a built-in transformers class, and point "
            "teachers[].path at that directory"
        )


def load_config(name: str, source: str) -> Any:
    from transformers import AutoConfig  # transformers: imported on use (start-up time)

    refuse_custom_code(name, source)
    with _load_errors(name, source):
        # explicit False: with None transformers asks on stdin, and `echo y | amoe ...` would run the checkpoint's code
        return AutoConfig.from_pretrained(source, trust_remote_code=False)


def load_model(name: str, cls: Any, source: str, device: torch.device | str) -> nn.Module:
    """`cls.from_pretrained(source)` frozen on `device` in the teacher compute dtype; never the checkpoint's code."""
    refuse_custom_code(name, source)
    refuse_pickle_weights(name, source)
    with _load_errors(name, source):
        model = cls.from_pretrained(source, dtype=compute_dtype(device), trust_remote_code=False, use_safetensors=True)
    return freeze(model.to(device))


def read_normalisation(
    source: str, default: tuple[tuple[float, float, float], tuple[float, float, float]]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Input mean/std from the checkpoint's preprocessor_config.json when it has one (JSON, never pickle)."""
    f = Path(source) / "preprocessor_config.json"
    if f.is_file():
        cfg = json.loads(f.read_text())
        mean, std = cfg.get("image_mean"), cfg.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]
    return default


def patch_size_of(name: str, cfg: Any) -> int:
    ps = getattr(cfg, "patch_size", None)
    if isinstance(ps, list | tuple):
        if len(set(ps)) != 1:
            raise AmoeError(f"teacher {name!r}: non-square patches {ps} are not supported")
        ps = ps[0]
    if not isinstance(ps, int):
        raise AmoeError(
            f"teacher {name!r}: model type {cfg.model_type!r} has no patch_size in its config; "
            "only ViT-style vision encoders (one token per patch) can be teachers"
        )
    return ps


class HFTeacher(Teacher):
    """A transformers ViT-style encoder taking `pixel_values [B, 3, H, W]`.

    Output tokens are `[prefix..., patches]`: summary = `pooler_output` when the model has one (CLS for DINOv3, a
    pooled vector for others), else the CLS token; registers = the `num_register_tokens` prefix tokens after CLS.
    Images of equal size run as one dense batch.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        cfg: Any,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        kind: str = "hf",
    ) -> None:
        super().__init__()
        self.name, self.kind, self.model = name, kind, model
        self.patch_size = patch_size_of(name, cfg)
        self.dim = int(cfg.hidden_size)
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.mean, self.std = mean, std
        self.summary_head = None
        params = inspect.signature(model.forward).parameters
        self._extra = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        self.eval()

    @torch.no_grad()
    def forward(self, images: list[Tensor], grid: Tensor | None = None) -> TeacherOutput:
        return self.forward_by_size(images, grid, self._encode)

    def _encode(self, x: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor, int]:
        out = self.model(pixel_values=x, **self._extra)
        hidden = out.last_hidden_state.float()
        prefix = hidden.shape[1] - rows * cols
        if hidden.ndim != 3 or prefix < self.num_registers:
            raise AmoeError(
                f"teacher {self.name!r}: {type(self.model).__name__} returned {list(hidden.shape)} tokens "
                f"for a {rows}x{cols} patch grid; only encoders with one output token per patch are supported"
            )
        pooled = getattr(out, "pooler_output", None)
        pooled = pooled.float() if pooled is not None and pooled.ndim == 2 else None
        if pooled is None:
            pooled = hidden[:, 0] if prefix > 0 else hidden[:, prefix:].mean(1)
        return pooled, hidden, prefix


def model_type(spec: Any) -> str:
    """The checkpoint's `model_type` (what amoe_core.models.teachers.loader dispatches on for kind `hf`)."""
    return str(getattr(load_config(spec.name, resolve_source(spec.name, spec.path)), "model_type", ""))


def load_typed(
    spec: Any, device: torch.device | str, cls: Any, model_types: tuple[str, ...], note: str = ""
) -> nn.Module:
    """`cls` from `spec.path` after checking the checkpoint holds one of `model_types` (kinds siglip2, dinov3)."""
    source = resolve_source(spec.name, spec.path)
    cfg = load_config(spec.name, source)
    if cfg.model_type not in model_types:
        raise AmoeError(
            f"teacher {spec.name!r}: {spec.path!r} holds a {cfg.model_type!r} model, but kind {spec.kind!r} needs "
            f"one of {list(model_types)}{note}; use kind 'hf' for other transformers encoders"
        )
    return load_model(spec.name, cls, source, device)


def load(spec: Any, device: torch.device | str = "cpu") -> Teacher:
    """Any transformers vision encoder (`AutoModel`); composite image-text checkpoints use their vision tower."""
    from transformers import AutoModel  # transformers: imported when a teacher loads (about a second of start-up)

    source = resolve_source(spec.name, spec.path)
    cfg = load_config(spec.name, source)
    model = load_model(spec.name, AutoModel, source, device)
    vision_cfg = cfg
    if getattr(cfg, "vision_config", None) is not None:
        vision = getattr(model, "vision_model", None)
        if vision is None:
            raise AmoeError(f"teacher {spec.name!r}: {cfg.model_type!r} has a vision_config but no vision_model")
        model, vision_cfg = vision, cfg.vision_config
    if getattr(vision_cfg, "hidden_size", None) is None:
        raise AmoeError(
            f"teacher {spec.name!r}: model type {cfg.model_type!r} is not a vision encoder (no hidden_size)"
        )
    default = ((0.5,) * 3, (0.5,) * 3) if "siglip" in cfg.model_type else (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = read_normalisation(source, default)  # type: ignore[arg-type]
    return HFTeacher(spec.name, model, vision_cfg, mean, std, kind="hf")
