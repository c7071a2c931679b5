"""`amoe curate embed`: every image of a shard set -> one summary embedding, in a float16 memmap aligned with the
manifest (row i of embeddings.npy is row i of manifest.parquet).

The encoder is a teacher from params.teachers (the paper embeds its pool with DINOv3) or any local
transformers/timm model given as `hf:PATH` / `timm:PATH`; images are resized to `embed.image_size` (square, rounded
to the encoder's patch multiple) and the encoder applies its own normalisation.

Many processes (`torchrun --nproc-per-node N -m amoe_core.cli curate embed`, `amoe submit embed` with N tasks, or
`embed.processes = N`): rank r embeds shards r, r + N, ... (in reading order) into its own part,
`parts/RRRRR-of-NNNNN/` (never a file another rank writes: safe on network file systems); rank 0 then gathers the
parts into embeddings.npy. A batch never spans two shards, so every image meets the same batch companions whatever
the number of processes, and the output is identical to the 1-process run. Resumable per part: rows go into the
part's `embeddings.partial.npy` and its `progress.json` records how many of its images are complete, after the
memmap is flushed, so a rerun with the same inputs and process count continues from each part's last batch.

Output (`embed.out`): embeddings.npy [n, D] float16, keys.parquet (key, in manifest order), meta.json (dim, count,
encoder, image_size, world_size). meta.json is written last and removed first: without it the directory is not
complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from PIL import Image

from amoe_core.config.embed import EmbedConfig
from amoe_core.config.teachers import TeacherSpec
from amoe_core.data.shards import iter_images, read_manifest, reading_order
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_path, atomic_write_json, create_memmap, remove_stale_temporaries
from amoe_core.launch.distributed import barrier, cleanup_distributed, init_distributed
from amoe_core.launch.local_ranks import run_local_ranks
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.outputs import check_output, mark_output
from amoe_core.progress import progress

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ images
def to_tensor(data: bytes, size: int) -> torch.Tensor:
    """Decode, convert to RGB and resize to size x size (bicubic, antialiased): [3, size, size] in [0, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = np.array(im, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


# ------------------------------------------------------------------------------------------------------ encoder
def encoder_spec(params: Params) -> TeacherSpec:
    """`embed.encoder`: a teacher name from params.teachers, or hf:PATH / timm:PATH for any local model."""
    enc = params.embed.encoder
    kind, sep, path = enc.partition(":")
    if sep and kind in ("hf", "timm"):
        if not path:
            raise AmoeError(f"embed.encoder = {enc!r}: give a model directory after {kind}:")
        require_path("embed.encoder", path, "model directory")
        return TeacherSpec(name="encoder", kind=kind, path=path)  # type: ignore[arg-type]
    if sep:
        raise AmoeError(f"embed.encoder = {enc!r}: use a teacher name ({[t.name for t in params.teachers]}), "
                        f"hf:PATH or timm:PATH")  # fmt: skip
    return params.teacher(enc)


def input_size(teacher: torch.nn.Module, image_size: int) -> int:
    """The square side fed to the encoder: `image_size` rounded to the patch multiple its forward accepts."""
    p = int(getattr(teacher, "student_patch_size", 0) or teacher.patch_size)
    return max(p, round(image_size / p) * p)


# ------------------------------------------------------------------------------------------------------ stage
def fingerprint(cfg: EmbedConfig, manifest: pd.DataFrame, size: int) -> str:
    """Identifies what a partial run was computing: same encoder, size and key list -> safe to resume."""
    h = hashlib.sha256(f"{cfg.encoder}|{size}|{len(manifest)}|".encode())
    h.update("\n".join(manifest["key"].astype(str)).encode())
    return h.hexdigest()[:16]


def part_order(manifest: pd.DataFrame, rank: int, world: int) -> np.ndarray:
    """Manifest rows that rank `rank` of `world` embeds, in reading order: whole shards r, r + world, ..."""
    order = reading_order(manifest)
    shard_col = manifest["shard"].to_numpy()[order]
    shard_rank = pd.factorize(shard_col)[0] % world  # shards numbered in reading order
    return order[shard_rank == rank]


def part_dir(out: Path, rank: int, world: int) -> Path:
    return out / "parts" / f"{rank:05d}-of-{world:05d}"


def run(params: Params) -> Path:
    """Embed every image of `embed.shards` into `embed.out` (resumes an interrupted run with the same inputs), on
    every process of the torch.distributed group when there is one; rank 0 assembles and writes the output."""
    cfg = params.embed
    out = Path(cfg.out)
    spec = encoder_spec(params)
    manifest = read_manifest(Path(cfg.shards), "embed.shards")
    if run_local_ranks(["curate", "embed"], params, cfg.processes):
        return out
    started_here = not dist.is_initialized()
    info = init_distributed()
    started_here = started_here and info.distributed
    try:
        teacher = load_teacher(spec, device=str(info.device))
        size = input_size(teacher, cfg.image_size)
        n, dim, fp = len(manifest), int(teacher.dim), fingerprint(cfg, manifest, size)
        meta = {"count": n, "dim": dim, "encoder": cfg.encoder, "kind": spec.kind, "image_size": size,
                "fingerprint": fp, "world_size": info.world_size}  # fmt: skip
        if info.is_main:
            _start(out, info.world_size)
        barrier()
        rows = part_order(manifest, info.rank, info.world_size)
        _embed_part(part_dir(out, info.rank, info.world_size), teacher, cfg, manifest, rows, size, dim, fp)
        barrier()
        if info.is_main:  # no barrier after it: gathering a large pool may outlast the collectives' timeout, and
            _finalize(out, manifest, meta, info.world_size)  # torchrun and submitit wait for every rank anyway
    finally:
        if started_here:
            cleanup_distributed()
    return out


def _start(out: Path, world: int) -> None:
    """Rank 0, before any rank writes: the old output stops looking complete; parts of another process count are
    stale (their shards differ) and go."""
    check_output("embed.out", out, "embed.out", legacy=("meta.json",))  # written in place: never someone's folder
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, "embed.out")
    (out / "meta.json").unlink(missing_ok=True)  # a finished older output is replaced, never mixed
    for legacy in ("embeddings.partial.npy", "progress.json"):  # the 1-process layout before parts
        (out / legacy).unlink(missing_ok=True)
    remove_stale_temporaries(out / "embeddings.npy", ".npy")  # a killed attempt's (the lock is held: none live)
    remove_stale_temporaries(out / "keys.parquet", ".parquet")
    for old in (out / "parts").glob("*") if (out / "parts").exists() else ():
        if not old.name.endswith(f"-of-{world:05d}"):
            shutil.rmtree(old)


def _embed_part(
    part: Path,
    teacher: torch.nn.Module,
    cfg: EmbedConfig,
    manifest: pd.DataFrame,
    rows: np.ndarray,
    size: int,
    dim: int,
    fp: str,
) -> None:
    """Embed `rows` (manifest rows in reading order) into part/embeddings.partial.npy, resuming its last batch."""
    part.mkdir(parents=True, exist_ok=True)
    partial, marker = part / "embeddings.partial.npy", part / "progress.json"
    n = len(rows)
    done = _resume_point(marker, partial, fp, n, dim)
    if done == 0:
        emb = create_memmap("embed.out", partial, (n, dim), np.float16)
        atomic_write_json(marker, {"fingerprint": fp, "done": 0})
    else:
        log.info("%s: resuming at image %d of %d", part.name, done, n)
        emb = np.load(partial, mmap_mode="r+")
    if done == n:
        return
    shard_col = manifest["shard"].to_numpy()
    bar = progress(total=n, initial=done, unit="img", desc=f"embed ({cfg.encoder}, part {part.name})")
    batch: list[torch.Tensor] = []
    batch_shard: object = None

    def flush() -> None:
        nonlocal done
        with torch.inference_mode():
            feats = teacher(batch).summary.float().cpu().numpy()
        if feats.shape != (len(batch), dim):
            raise AmoeError(f"encoder {cfg.encoder!r} returned summaries of shape {feats.shape}, expected "
                            f"({len(batch)}, {dim})")  # fmt: skip
        emb[done : done + len(batch)] = feats.astype(np.float16)
        emb.flush()  # rows on disk before the marker claims them
        done += len(batch)
        atomic_write_json(marker, {"fingerprint": fp, "done": done})
        bar.update(len(batch))
        batch.clear()

    for row, data in iter_images(Path(cfg.shards), manifest, rows, done):
        if batch and shard_col[row] != batch_shard:  # a batch never spans two shards (see the module docstring)
            flush()
        batch_shard = shard_col[row]
        batch.append(to_tensor(data, size))
        if len(batch) == cfg.batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    emb.flush()


def _resume_point(marker: Path, partial: Path, fp: str, n: int, dim: int) -> int:
    """How many images (in reading order) an earlier interrupted run with the same inputs finished; else 0."""
    if not marker.exists() or not partial.exists():
        return 0
    try:
        state = json.loads(marker.read_text())
        shape = np.load(partial, mmap_mode="r").shape
    except (ValueError, OSError):
        return 0
    if state.get("fingerprint") != fp or shape != (n, dim):
        return 0
    return int(state.get("done", 0))


def _finalize(out: Path, manifest: pd.DataFrame, meta: dict, world: int) -> None:
    """Rank 0: scatter every part's rows into manifest order, then keys and meta.json (last)."""
    chunk = 65536  # rows copied at a time: bounded memory on a pool of any size
    (out / "meta.json").unlink(missing_ok=True)
    with atomic_path(out / "embeddings.npy", suffix=".npy") as tmp:
        emb = create_memmap("embed.out", tmp, (meta["count"], meta["dim"]), np.float16)
        for rank in range(world):
            rows = part_order(manifest, rank, world)
            part = np.load(part_dir(out, rank, world) / "embeddings.partial.npy", mmap_mode="r")
            for start in range(0, len(rows), chunk):
                emb[rows[start : start + chunk]] = part[start : start + chunk]
        emb.flush()
        del emb
    with atomic_path(out / "keys.parquet", suffix=".parquet") as tmp:
        manifest[["key"]].to_parquet(tmp, index=False)
    atomic_write_json(out / "meta.json", meta)
    shutil.rmtree(out / "parts")
