"""`amoe teachers cache`: the teachers' outputs for a run's images at the grids the run will see, written once and
read by distillation instead of running the teachers (`distill.teacher_cache: PATH`), e.g. across sweep trials.

A cache is valid when a teacher's input is a pure function of (image, grid): the loader decodes, resizes each image to
its grid and patchifies it, with no per-step random augmentation of the teacher's input; the grid of an image is a
pure function of (distill.seed, epoch, key) (`resolution.plan_grids`, log-uniform budgets per epoch). So the cache
holds, per selected image and per epoch the run covers, the outputs at that epoch's grid (an image that keeps its
grid across epochs is stored once), in the space the loss reads them (raw teacher features: PHI-S is fitted from
them and applied inside the loss), in bf16 or fp16.

Layout (WebDataset-style tar shards, one member per (image, grid)): `PATH/teachers-00000.tar` ... with members
`<key>_<rows>x<cols>.safetensors` holding `<teacher>.summary` [D], `<teacher>.patches` [rows*cols, D] and
`<teacher>.registers` [R, D]; `PATH/fingerprint.json` records what the outputs depend on: each teacher's weights
(sha256), the grid policy, the dtype and the selection. Distillation refuses a cache whose fingerprint differs from
the run's, naming the part. The epochs covered are those a single-process run of distill.steps x grad_accum
batches walks; a run that walks further (more ranks) stops at the first image the cache lacks, saying so.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from amoe_core.data.loader import read_selection
from amoe_core.data.packed import PackedBatch
from amoe_core.data.resolution import plan_grids
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_dir, atomic_write_json
from amoe_core.launch.distributed import DistInfo
from amoe_core.models.teachers.base import Teacher, TeacherOutput
from amoe_core.progress import progress
from amoe_core.train import components

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

STAGE = "teachers-cache"
FINGERPRINT = "fingerprint.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PER_SHARD = 2000  # (image, grid) members per tar shard


def weights_hash(teacher: Teacher) -> str:
    """sha256 of the teacher's tensors (names, dtypes, shapes, bytes) in name order."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def selection_hash(params: Params) -> str:
    df, _ = read_selection(params.distill.shards, params.distill.selection)
    rows = df[["key", "width", "height"]].astype(str).agg(":".join, axis=1)
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def fingerprint(params: Params, teachers: dict[str, Teacher]) -> dict[str, Any]:
    """What the cached outputs depend on, part by part (the order refusals are checked in)."""
    p = params.packing
    return {
        "teachers": {name: {"kind": t.kind, "weights": weights_hash(t)} for name, t in teachers.items()},
        "grid policy": {
            "seed": params.distill.seed,
            "patch_size": p.patch_size,
            "min_tokens": p.min_tokens,
            "max_tokens": p.max_tokens,
            "token_sampling": p.token_sampling,
        },
        "dtype": params.distill.teacher_cache_dtype,
        "selection": selection_hash(params),
    }


def mismatch(cached: dict[str, Any], run: dict[str, Any]) -> str | None:
    """The first part in which a cache's fingerprint differs from the run's, in words; None when they agree."""
    for part in ("teachers", "grid policy", "dtype", "selection"):
        if cached.get(part) == run[part]:
            continue
        if part == "teachers":
            a, b = cached.get(part) or {}, run[part]
            if set(a) != set(b):
                return f"the teachers differ (cache: {sorted(a)}, run: {sorted(b)})"
            name = next(n for n in b if a[n] != b[n])
            if a[name].get("kind") != b[name]["kind"]:
                return f"teacher {name!r}'s kind differs (cache {a[name].get('kind')}, run {b[name]['kind']})"
            # the same checkpoint hashes differently in bf16 (CUDA) and float32 (CPU): its outputs differ too
            return f"teacher {name!r}'s weights differ (other checkpoint, or other dtype: bf16 on CUDA, float32 on CPU)"
        if part == "grid policy":
            a, b = cached.get(part) or {}, run[part]
            keys = [k for k in b if a.get(k) != b[k]]
            return "the grid policy differs (" + ", ".join(f"{k}: cache {a.get(k)}, run {b[k]}" for k in keys) + ")"
        if part == "dtype":
            return f"the dtype differs (cache {cached.get(part)}, run distill.teacher_cache_dtype {run[part]})"
        return "the selection differs (other images or sizes than distill.shards + distill.selection give)"
    return None


def covered_epochs(params: Params) -> int:
    """Epochs a single-process run of distill.steps x grad_accum batches walks (the last one partly)."""
    need, epoch = params.distill.steps * params.distill.grad_accum, 0
    while need > 0:
        n = len(components.loader(params, DistInfo(), epoch, 0))
        if n == 0:
            raise AmoeError("the training set yields no complete step; use more images or fewer packing.seqs_per_step")
        need, epoch = need - n, epoch + 1
    return epoch


def planned_size(params: Params, teachers: dict[str, Teacher], epochs: int) -> tuple[int, int, dict[str, int]]:
    """(distinct (image, grid) pairs, their patch tokens, bytes per teacher) of the cache, from stored sizes alone."""
    df, _ = read_selection(params.distill.shards, params.distill.selection)
    keys = df["key"].astype(str).tolist()
    pairs: set[tuple[str, int, int]] = set()
    for epoch in range(epochs):
        grids = plan_grids(
            params.packing, keys, df["height"].to_numpy(), df["width"].to_numpy(), params.distill.seed, epoch
        )
        pairs.update((k, int(r), int(c)) for k, (r, c) in zip(keys, grids.tolist()))
    tokens = sum(r * c for _, r, c in pairs)
    itemsize = DTYPES[params.distill.teacher_cache_dtype].itemsize
    sizes = {name: (tokens + len(pairs) * (1 + t.num_registers)) * t.dim * itemsize for name, t in teachers.items()}
    return len(pairs), tokens, sizes


def member(key: str, rows: int, cols: int) -> str:
    return f"{key}_{rows}x{cols}.safetensors"


def run(params: Params) -> dict[str, Any]:
    """Write the teacher cache at distill.teacher_cache for this run's teachers, selection and grids."""
    out = params.distill.teacher_cache
    if out is None:
        raise AmoeError("distill.teacher_cache is not set; set it to the folder the cache should be written to")
    require_path("distill.shards", params.distill.shards, "shard directory")
    info = DistInfo()
    teachers = components.load_teachers(params, info.device)
    epochs = covered_epochs(params)
    n_pairs, tokens, sizes = planned_size(params, teachers, epochs)
    total = sum(sizes.values()) + 1024 * n_pairs  # tar headers and safetensors headers
    per = ", ".join(f"{name} {t.dim} ch {sizes[name] / 1e6:.1f} MB" for name, t in teachers.items())
    print(
        f"teacher cache: {n_pairs} (image, grid) pairs over {epochs} epoch(s), {tokens} patch tokens x channels x "
        f"{DTYPES[params.distill.teacher_cache_dtype].itemsize} bytes: {per}; about {total / 1e6:.1f} MB in all"
    )
    parent = Path(out).resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < total * 1.1:
        raise AmoeError(
            f"distill.teacher_cache {str(out)!r}: the cache needs about {total / 1e6:.1f} MB but {parent} has "
            f"{free / 1e6:.1f} MB free; free space or point distill.teacher_cache at a larger disk"
        )
    fp = fingerprint(params, teachers)
    with atomic_dir(out, STAGE, "distill.teacher_cache") as tmp:
        written = write(params, teachers, epochs, tmp, n_pairs)
        atomic_write_json(tmp / FINGERPRINT, {**fp, "epochs": epochs, "pairs": written})
    return {"path": str(out), "pairs": written, "epochs": epochs, "bytes": total}


@torch.no_grad()
def write(params: Params, teachers: dict[str, Teacher], epochs: int, folder: Path, n_pairs: int) -> int:
    """Run the packed teachers over the run's batches, epoch by epoch, and write every new (image, grid) once."""
    dtype = DTYPES[params.distill.teacher_cache_dtype]
    done: set[str] = set()
    shard: tarfile.TarFile | None = None
    bar = progress(total=n_pairs, desc="teacher cache", unit="image")
    try:
        for epoch in range(epochs):
            for batch in components.loader(params, DistInfo(), epoch, 0):
                outs = components.teacher_outputs(teachers, batch)
                for i, item in enumerate(split(outs, batch)):
                    name = member(batch.keys[i], *batch.image_sizes[i].tolist())
                    if name in done:
                        continue
                    if len(done) % PER_SHARD == 0:
                        if shard is not None:
                            shard.close()
                        shard = tarfile.open(folder / f"teachers-{len(done) // PER_SHARD:05d}.tar", "w")
                    data = save_safetensors({k: v.to(dtype).contiguous() for k, v in item.items()})
                    entry = tarfile.TarInfo(name)
                    entry.size = len(data)
                    shard.addfile(entry, io.BytesIO(data))  # type: ignore[union-attr]
                    done.add(name)
                    bar.update(1)
    finally:
        if shard is not None:
            shard.close()
        bar.close()
    return len(done)


def split(outs: dict[str, TeacherOutput], batch: PackedBatch) -> list[dict[str, torch.Tensor]]:
    """Per image of the batch: `<teacher>.summary / .patches / .registers` (canonical order -> contiguous slices)."""
    counts = (batch.image_sizes[:, 0] * batch.image_sizes[:, 1]).tolist()
    items: list[dict[str, torch.Tensor]] = [{} for _ in counts]
    for name, out in outs.items():
        for i, patches in enumerate(out.patches.cpu().split(counts)):
            items[i][f"{name}.summary"] = out.summary[i].cpu()
            items[i][f"{name}.patches"] = patches
            if out.registers is not None:
                items[i][f"{name}.registers"] = out.registers[i].cpu()
    return items


class TeacherCache:
    """Reads targets for a batch from a cache folder; refuses one made for other teachers, grids, dtype or images."""

    def __init__(self, path: Path, params: Params, teachers: dict[str, Teacher]) -> None:
        require_path("distill.teacher_cache", path, "teacher cache (write it with `amoe teachers cache`)")
        self.path, self.names = Path(path), list(teachers)
        f = self.path / FINGERPRINT
        if not f.is_file():
            raise AmoeError(f"distill.teacher_cache {str(path)!r} has no {FINGERPRINT}: not a complete teacher cache")
        cached = json.loads(f.read_text())
        why = mismatch(cached, fingerprint(params, teachers))
        if why is not None:
            raise AmoeError(
                f"distill.teacher_cache {str(path)!r} was made for another run: {why}; rerun `amoe teachers cache` "
                "or unset distill.teacher_cache"
            )
        self.epochs = int(cached.get("epochs", 0))
        self.index: dict[str, tuple[Path, int, int]] = {}
        for shard in sorted(self.path.glob("teachers-*.tar")):
            with tarfile.open(shard) as tar:
                for m in tar:
                    self.index[m.name] = (shard, m.offset_data, m.size)
        self.files: dict[Path, Any] = {}

    def _read(self, name: str) -> dict[str, torch.Tensor]:
        shard, offset, size = self.index[name]
        if shard not in self.files:
            self.files[shard] = open(shard, "rb")  # noqa: SIM115 - kept open for the run's reads
        fh = self.files[shard]
        fh.seek(offset)
        return load_safetensors(fh.read(size))

    def __call__(self, batch: PackedBatch) -> dict[str, TeacherOutput]:
        """The batch's targets, float32 on the batch's device, in canonical order (as the teachers give them)."""
        items = []
        for key, (r, c) in zip(batch.keys, batch.image_sizes.tolist()):
            name = member(key, r, c)
            if name not in self.index:
                raise AmoeError(
                    f"distill.teacher_cache {str(self.path)!r} has no outputs for image {key!r} at grid {r}x{c}: it "
                    f"covers {self.epochs} epoch(s) of a single-process run; rerun `amoe teachers cache` with "
                    "distill.steps covering this run"
                )
            items.append(self._read(name))
        device = batch.image_id.device
        out = {}
        for t in self.names:
            regs = [it[f"{t}.registers"] for it in items if f"{t}.registers" in it]
            out[t] = TeacherOutput(
                summary=torch.stack([it[f"{t}.summary"] for it in items]).float().to(device),
                patches=torch.cat([it[f"{t}.patches"] for it in items]).float().to(device),
                registers=torch.stack(regs).float().to(device) if regs else None,
            )
        return out

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()
