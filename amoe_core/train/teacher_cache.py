"""`amoe teachers cache`: the teachers' outputs for a run's images at the grids the run will see, written once and
read by distillation instead of running the teachers (`distill.teacher_cache: PATH`), e.g. across sweep trials.

A cache is valid when a teacher's input is a pure function of (image, grid): the loader decodes, resizes each image to
its grid and patchifies it, with no per-step random augmentation of the teacher's input; the grid of an image is a
pure function of (distill.seed, epoch, key) (`resolution.plan_grids`, log-uniform budgets per epoch). So the cache
holds, per selected image and per epoch the run covers, the outputs at that epoch's grid (an image that keeps its
grid across epochs is stored once), in the space the loss reads them (raw teacher features: PHI-S is fitted from
them and applied inside the loss), in bf16 or fp16.

Layout (WebDataset-style tar shards, one member per (image, grid)): `PATH/teachers-RRRRR-of-WWWWW-NNNNN.tar` with
members `<key>_<rows>x<cols>.safetensors` holding `<teacher>.summary` [D], `<teacher>.patches` [rows*cols, D] and
`<teacher>.registers` [R, D]; `PATH/fingerprint.json` records what the outputs depend on: each teacher's weights
(sha256), the grid policy, the dtype and the selection. Distillation refuses a cache whose fingerprint differs from
the run's, naming the part. The epochs covered are those a single-process run of distill.steps x grad_accum
batches walks; a run that walks further (more ranks) stops at the first image the cache lacks, saying so.

Many processes (`torchrun --nproc-per-node N -m amoe_core.cli teachers cache`, `amoe submit teachers-cache` with N
tasks): every rank plans the single-process stream from the manifest (`plan_jobs`: each pair is computed in the step
where one process first meets it), takes every N-th of the steps that meet new pairs and writes its own shards
(`teachers-<rank>-of-<N>-*`, files no other rank writes); rank 0 writes fingerprint.json after every rank finished.
So N processes write the pairs one process writes, each in the same packed batch. A shard is renamed into place
when complete, fingerprint.json is removed first and written last: a killed run leaves no cache a reader accepts, and
a rerun with the same inputs and process count (`plan.json`) keeps the complete shards and computes the rest.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from amoe_core.config.distill import DistillConfig
from amoe_core.data.loader import PackedShardDataset, read_selection
from amoe_core.data.packed import PackedBatch
from amoe_core.data.packing import split_for
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_path, atomic_write_json, remove_stale_temporaries
from amoe_core.launch.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from amoe_core.models.teachers.base import Teacher, TeacherOutput
from amoe_core.outputs import check_output, mark_output, output_lock
from amoe_core.progress import progress
from amoe_core.train import components

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

STAGE = "teachers-cache"
FINGERPRINT = "fingerprint.json"
PLAN = "plan.json"  # what the ranks are writing (rank 0, first): a rerun with the same plan keeps complete shards
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


# The params keys (beyond the teachers' checkpoints) a cache's outputs depend on: what `fingerprint` reads, and what
# sets the epochs a run walks (the cache covers those of distill.steps x grad_accum batches of the packing's steps).
DEPENDS_ON = {"distill.seed", "distill.shards", "distill.selection", "distill.teacher_cache_dtype", "distill.steps",
              "distill.grad_accum"}  # fmt: skip


def depends_on(key: str) -> bool:
    """Whether a cache made for some params may not serve runs that vary params key `key` (`section.field`,
    `teachers.<i>.<field>`): loss settings and the teachers' loss weights change no teacher output; the teachers,
    the packing (grid policy and the steps' batching) and the keys above do."""
    section, _, rest = key.partition(".")
    if section == "teachers":
        return not rest.endswith("_weight")
    return section == "packing" or key in DEPENDS_ON


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


def read_fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint of a complete cache at `path` (written last, so a killed write has none); None if there is none."""
    f = Path(path) / FINGERPRINT
    return json.loads(f.read_text()) if f.is_file() else None


def covered_epochs(params: Params) -> int:
    """Epochs a single-process run of distill.steps x grad_accum batches walks (the last one partly)."""
    return len(epoch_datasets(params))


def epoch_datasets(params: Params) -> list[PackedShardDataset]:
    """The single-process loader's dataset of every epoch a run of distill.steps x grad_accum batches walks."""
    need, out = params.distill.steps * params.distill.grad_accum, []
    while need > 0:
        d = params.distill
        ds = PackedShardDataset(params.packing, d.shards, d.selection, d.seed, 0, 1, epoch=len(out))
        if ds.steps_per_epoch == 0:
            raise AmoeError("the training set yields no complete step; use more images or fewer packing.seqs_per_step")
        need -= ds.steps_per_epoch
        out.append(ds)
    return out


@dataclass(frozen=True)
class Job:
    """One step of the single-process stream that meets (image, grid) pairs no earlier step met: the teachers run
    on that step's packed batch and the pairs at `new` (image positions in the batch) are written."""

    epoch: int
    step: list[list[int]]  # the epoch's rows, sequence by sequence (as the loader packs them)
    pairs: list[tuple[str, int, int]]  # (key, rows, cols) of each image of the step, in batch order
    new: list[int]

    def name(self, j: int) -> str:
        return member(*self.pairs[j])


def plan_jobs(datasets: list[PackedShardDataset]) -> list[Job]:
    """Every step of the single-process stream, epoch by epoch, that holds a pair no earlier step held: each pair
    is computed in the batch where a 1-process run first meets it, whichever rank computes it (so any number of
    ranks writes what one process writes). From the manifest alone: nothing is decoded."""
    seen: set[tuple[str, int, int]] = set()
    jobs = []
    for epoch, ds in enumerate(datasets):
        shares = [split_for(ds.plan, 0, 1, w, ds.workers) for w in range(ds.workers)]
        for k in range(ds.steps_per_epoch):  # the loader's order: its workers round-robin
            step = shares[k % ds.workers][k // ds.workers]
            rows = [i for seq in step for i in seq]
            pairs = [(str(ds.rows["key"].iat[i]), int(ds.grids[i][0]), int(ds.grids[i][1])) for i in rows]
            new = [j for j, pair in enumerate(pairs) if pair not in seen]
            seen.update(pairs)
            if new:
                jobs.append(Job(epoch, step, pairs, new))
    return jobs


def planned_size(jobs: list[Job], teachers: dict[str, Teacher], cfg: DistillConfig) -> tuple[int, int, dict[str, int]]:
    """(distinct (image, grid) pairs, their patch tokens, bytes per teacher) of the cache."""
    pairs = [job.pairs[j] for job in jobs for j in job.new]
    tokens = sum(r * c for _, r, c in pairs)
    itemsize = DTYPES[cfg.teacher_cache_dtype].itemsize
    sizes = {name: (tokens + len(pairs) * (1 + t.num_registers)) * t.dim * itemsize for name, t in teachers.items()}
    return len(pairs), tokens, sizes


def member(key: str, rows: int, cols: int) -> str:
    return f"{key}_{rows}x{cols}.safetensors"


def shard_name(rank: int, world: int, n: int) -> str:
    """Rank `rank` of `world` writes its pairs, in job order, PER_SHARD to a shard: a file only it writes."""
    return f"teachers-{rank:05d}-of-{world:05d}-{n:05d}.tar"


def run(params: Params) -> dict[str, Any]:
    """Write the teacher cache at distill.teacher_cache for this run's teachers, selection and grids, on every
    process of the torch.distributed group when there is one (torchrun, `amoe submit teachers-cache`)."""
    out = params.distill.teacher_cache
    if out is None:
        raise AmoeError("distill.teacher_cache is not set; set it to the folder the cache should be written to")
    require_path("distill.shards", params.distill.shards, "shard directory")
    started_here = not dist.is_initialized()
    info = init_distributed()
    started_here = started_here and info.distributed
    try:
        with output_lock("distill.teacher_cache", out):  # rank 0 holds it for the job
            return _run(params, Path(out), info)
    finally:
        if started_here:
            cleanup_distributed()


def _run(params: Params, out: Path, info: DistInfo) -> dict[str, Any]:
    teachers = components.load_teachers(params, info.device)
    datasets = epoch_datasets(params)
    jobs = plan_jobs(datasets)
    dtype = params.distill.teacher_cache_dtype
    n_pairs, tokens, sizes = planned_size(jobs, teachers, params.distill)
    total = sum(sizes.values()) + 1024 * n_pairs  # tar headers and safetensors headers
    if info.is_main:
        per = ", ".join(f"{name} {t.dim} ch {sizes[name] / 1e6:.1f} MB" for name, t in teachers.items())
        print(
            f"teacher cache: {n_pairs} (image, grid) pairs over {len(datasets)} epoch(s), {tokens} patch tokens x "
            f"channels x {DTYPES[dtype].itemsize} bytes: {per}; about {total / 1e6:.1f} MB in all"
        )
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < total * 1.1:  # every rank checks (the same disk): none starts a cache that cannot be finished
        raise AmoeError(
            f"distill.teacher_cache {str(out)!r}: the cache needs about {total / 1e6:.1f} MB but {parent} has "
            f"{free / 1e6:.1f} MB free; free space or point distill.teacher_cache at a larger disk"
        )
    fp = fingerprint(params, teachers)
    plan = {"fingerprint": fp, "epochs": len(datasets), "pairs": n_pairs, "world_size": info.world_size}
    mine = jobs[info.rank :: info.world_size]
    if info.is_main:
        _start(out, plan, [sum(len(j.new) for j in jobs[r :: info.world_size]) for r in range(info.world_size)])
    barrier()
    _write_part(params, teachers, datasets, mine, out, info)
    barrier()
    if info.is_main:  # last: a folder without it is no cache (the reader refuses it)
        atomic_write_json(out / FINGERPRINT, {**fp, "epochs": len(datasets), "pairs": n_pairs})
    return {"path": str(out), "pairs": n_pairs, "epochs": len(datasets), "bytes": total}


def _start(out: Path, plan: dict[str, Any], per_rank: list[int]) -> None:
    """Rank 0, before any rank writes: the cache stops looking complete; shards of another plan (other inputs or
    process count) go, shards of this plan stay (a rerun after a kill continues from them)."""
    check_output("distill.teacher_cache", out, STAGE)
    (out / FINGERPRINT).unlink(missing_ok=True)
    same = (out / PLAN).is_file() and json.loads((out / PLAN).read_text()) == json.loads(json.dumps(plan))
    if not same and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, STAGE)
    world = plan["world_size"]
    for rank, n in enumerate(per_rank):
        for k in range(-(-n // PER_SHARD)):
            remove_stale_temporaries(out / shard_name(rank, world, k), ".tar")  # a killed attempt's (lock held)
    atomic_write_json(out / PLAN, plan)


@torch.no_grad()
def _write_part(
    params: Params,
    teachers: dict[str, Teacher],
    datasets: list[PackedShardDataset],
    jobs: list[Job],
    out: Path,
    info: DistInfo,
) -> None:
    """This rank's jobs -> its shards, PER_SHARD pairs each, each renamed into place when complete; shards a
    killed earlier attempt completed are kept and their pairs not recomputed."""
    dtype = DTYPES[params.distill.teacher_cache_dtype]
    world = info.world_size
    done = 0
    while (out / shard_name(info.rank, world, done)).is_file():
        done += 1
    skip = done * PER_SHARD  # pairs already in complete shards
    total = sum(len(j.new) for j in jobs)
    bar = progress(total=total, initial=min(skip, total), desc=f"teacher cache (rank {info.rank})", unit="image")

    def members() -> Iterator[tuple[str, bytes]]:
        first = 0  # index of the job's first pair in this rank's order
        todo: list[tuple[Job, int]] = []
        for job in jobs:
            if first + len(job.new) > skip:
                todo.append((job, first))
            first += len(job.new)
        for epoch, ds in enumerate(datasets):
            here = [(job, at) for job, at in todo if job.epoch == epoch]
            for (job, at), batch in zip(here, ds.stream([job.step for job, _ in here]), strict=True):
                assert batch.keys == [k for k, _, _ in job.pairs]  # the loader packs a step as planned
                items = split(components.teacher_outputs(teachers, batch.to(info.device)), batch)
                for n, j in enumerate(job.new):
                    if at + n >= skip:
                        yield job.name(j), save_safetensors({k: v.to(dtype).contiguous() for k, v in items[j].items()})
                        bar.update(1)

    stream, n = members(), done
    try:
        while (head := next(stream, None)) is not None:
            with (
                atomic_path(out / shard_name(info.rank, world, n), suffix=".tar") as tmp,
                tarfile.open(tmp, "w") as tar,
            ):
                for name, data in itertools.chain([head], itertools.islice(stream, PER_SHARD - 1)):
                    entry = tarfile.TarInfo(name)
                    entry.size = len(data)
                    tar.addfile(entry, io.BytesIO(data))
            n += 1
    finally:
        bar.close()


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
        cached = read_fingerprint(self.path)
        if cached is None:
            raise AmoeError(f"distill.teacher_cache {str(path)!r} has no {FINGERPRINT}: not a complete teacher cache")
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
