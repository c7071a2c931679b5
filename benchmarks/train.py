"""Training throughput of the tiny student (issue 6), measured side by side in one run on this machine's CPU:

1. real (non-padding) patch tokens/s of a full training step (student forward + DistillLoss + backward + AdamW) on
   token-balanced packed batches (packing.mode=packed, several images per sequence) vs one image per row padded to
   the longest image of the step (packing.mode=fixed), with the same patch-token budget per step
   (seqs_per_step x c_max = images_per_step x max_tokens). Teacher targets are precomputed outside the timing (the
   teachers' cost does not depend on how the student batches), as random PHI-S-space targets of two teachers.
2. data-loader throughput (steps/s of the packed loader, decode + resize + patchify + pack) vs what training
   consumes (steps/s of the packed training step): the loader must keep up with room to spare.
Images: the demo shards (data/shards, `make demo` or `amoe data ingest`), a random subset. Targets in the issue:
packed >= 1.5x padded, loader >= 3x consumption. The last line is the packed/padded ratio. `--smoke` runs it in
seconds on sample shards of real photos (make test does).

    python benchmarks/train.py [--images 800] [--steps 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _smoke import parse_and_compare, sample_shards  # noqa: E402

from amoe_core.config import LossConfig, PackingConfig, StudentConfig, TeacherSpec  # noqa: E402
from amoe_core.data.loader import build_loader  # noqa: E402
from amoe_core.data.packed import PackedBatch  # noqa: E402
from amoe_core.losses.distill_loss import DistillLoss  # noqa: E402
from amoe_core.models.heads import TeacherDims  # noqa: E402
from amoe_core.models.student import build_student  # noqa: E402
from amoe_core.models.teachers.base import TeacherOutput  # noqa: E402

TEACHERS = {"dino": TeacherDims(128, 4), "siglip": TeacherDims(128, 0)}
SPECS = [
    TeacherSpec(name="dino", kind="dinov3", path="-", register_weight=1.0),
    TeacherSpec(name="siglip", kind="siglip2", path="-"),
]


def targets_for(batch: PackedBatch, gen: torch.Generator) -> dict[str, TeacherOutput]:
    n, t = batch.n_images, batch.n_tokens
    return {
        name: TeacherOutput(
            summary=torch.randn(n, d.dim, generator=gen),
            patches=torch.randn(t, d.dim, generator=gen),
            registers=torch.randn(n, d.num_registers, d.dim, generator=gen) if d.num_registers else None,
        )
        for name, d in TEACHERS.items()
    }


def train_tokens_per_s(batches: list[PackedBatch], max_images_per_seq: int, warmup: int = 2) -> tuple[float, float]:
    """(real tokens/s, steps/s) of full training steps over `batches` (the first `warmup` are not timed)."""
    torch.manual_seed(0)
    student = build_student(StudentConfig(name="tiny"), TEACHERS, max_images_per_seq)
    loss_fn = DistillLoss(LossConfig(), SPECS)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    prepared = [(b, targets_for(b, gen)) for b in batches]
    tokens, t0 = 0, 0.0
    for i, (batch, targets) in enumerate(prepared):
        if i == warmup:
            t0, tokens = time.perf_counter(), 0
        out = student(batch)
        loss_fn(out, targets, batch.token_image_id)["total"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        student.update_balance_bias(1e-3)
        tokens += batch.n_tokens
    secs = time.perf_counter() - t0
    return tokens / secs, (len(prepared) - warmup) / secs


def take(loader, n: int) -> list[PackedBatch]:
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--images", type=int, default=1500, help="random subset of the shard set")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per mode")
    ap.add_argument("--workers", type=int, default=2, help="loader workers for the throughput comparison")
    ap.add_argument("--c-max", type=int, default=256, help="tokens per packed sequence")
    ap.add_argument("--seqs", type=int, default=8, help="packed sequences per step")
    parse_and_compare(ap, compare, smoke, "sample shards of real photos, not --shards")


def smoke(args: argparse.Namespace, tmp: Path) -> None:
    args.shards = str(sample_shards(tmp, 48))
    args.steps, args.workers, args.c_max, args.seqs = 1, 1, 64, 2


def compare(args: argparse.Namespace) -> None:
    shards = Path(args.shards)
    if not (shards / "manifest.parquet").exists():
        sys.exit(f"{shards}/manifest.parquet not found: run `make demo` (or `amoe data ingest`) first")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    manifest = pd.read_parquet(shards / "manifest.parquet", columns=["key"])
    with tempfile.TemporaryDirectory() as tmp:
        selection = Path(tmp) / "subset.parquet"
        manifest.sample(n=min(args.images, len(manifest)), random_state=0).to_parquet(selection)
        c_max, seqs, max_tokens = args.c_max, args.seqs, 64
        packed_cfg = PackingConfig(c_max=c_max, seqs_per_step=seqs, max_tokens=max_tokens, workers=0)
        padded_cfg = PackingConfig(
            c_max=c_max, max_tokens=max_tokens, mode="fixed", images_per_step=seqs * c_max // max_tokens, workers=0
        )
        n = args.steps + 2
        packed = take(build_loader(packed_cfg, shards, selection, 0, 0, 1), n)
        padded = take(build_loader(padded_cfg, shards, selection, 0, 0, 1), n)
        if min(len(packed), len(padded)) < n:
            sys.exit(f"{args.images} images give fewer than {n} steps of {seqs} x {c_max} tokens: use more --images")
        util = lambda bs: sum(b.n_tokens for b in bs) / sum(b.image_id.numel() for b in bs)  # noqa: E731
        print(
            f"patch-token budget per step: {seqs * c_max} (packed {seqs} x {c_max}; padded "
            f"{padded_cfg.images_per_step} rows, each padded to the step's longest image)"
        )
        print(f"slot utilisation: packed {util(packed):.2f}, padded {util(padded):.2f}")
        tok_packed, steps_packed = train_tokens_per_s(packed, packed_cfg.max_images_per_seq)
        tok_padded, _ = train_tokens_per_s(padded, 1)
        print(f"training real tokens/s: packed {tok_packed:.0f}, padded {tok_padded:.0f}")

        loader_cfg = packed_cfg.model_copy(update={"workers": args.workers})
        loader = build_loader(loader_cfg, shards, selection, 0, 0, 1)
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        t0, k = time.perf_counter(), 0
        for _ in it:
            k += 1
            if k == 3 * n:
                break
        loader_steps = k / (time.perf_counter() - t0)
        print(
            f"loader {loader_steps:.2f} steps/s ({args.workers} workers) vs training consumption "
            f"{steps_packed:.2f} steps/s: {loader_steps / steps_packed:.1f}x"
        )
        print(f"packed/padded training tokens/s: {tok_packed / tok_padded:.2f}x")


if __name__ == "__main__":
    main()
