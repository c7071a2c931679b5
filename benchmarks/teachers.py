"""Teachers at packing speed (issue 31), measured side by side in one run on this machine's CPU:

1. the teachers' forward alone (demo-size DINOv3 + SigLIP2, `params.demo_teachers`: 4 layers, width 128, random
   weights - the cost does not depend on them) on the step's packed sequences (`Teacher.forward_packed`, one
   forward per teacher) vs the per-size path (DINOv3 one dense batch per distinct grid, SigLIP2 padded NaFlex
   batches);
2. whole training steps (teachers + tiny student + PHI-S + DistillLoss + backward + AdamW, what `amoe distill`
   runs per step) in real patch tokens/s, packed teachers vs per-size teachers, and the teachers' share of a step;
3. the same steps with targets read from a teacher cache (`amoe teachers cache`, written first) vs online packed
   teachers (floor 1.5x);
4. a whole sweep trial (the sweep's objective, `distill_knn`: a `--trial-steps` distillation with its loader and PHI-S
   fit, then the evaluation) reading a cache vs running the teachers, alternating, `--trials` of each; the
   evaluation runs on the demo splits (data/demo/splits) or, without them, on sample photos.
Both are timed interleaved (packed, per-size, packed, ...) on the same steps, so load from other processes hits both
alike. Steps: the packed loader over the demo shards (`--shards`, default data/shards) with benchmarks/train.py's
geometry (8 x 256 tokens, 4-64 tokens per image, log-uniform), or, without demo shards, sample shards of real photos
ingested on the fly. Floors in the issue (2 CPU cores): teacher forward >= 1.6x, whole step >= 1.15x. The last line is
the teacher-forward ratio; `--smoke` runs it in seconds (make test does).

    python benchmarks/teachers.py [--shards data/shards] [--steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _smoke import parse_and_compare, sample_pool, sample_shards  # noqa: E402

from amoe_core.config import PackingConfig, Params, StudentConfig  # noqa: E402
from amoe_core.data.loader import build_loader  # noqa: E402
from amoe_core.data.packed import PackedBatch  # noqa: E402
from amoe_core.models.student import Student, build_student  # noqa: E402
from amoe_core.models.teachers.base import Teacher  # noqa: E402
from amoe_core.overrides import with_overrides  # noqa: E402
from amoe_core.sweep import objective  # noqa: E402
from amoe_core.train import components, teacher_cache  # noqa: E402
from amoe_core.train.demo_teachers.classifier import build_backbone  # noqa: E402

Targets = Callable[[PackedBatch], dict]


def demo_teachers(params: Params, folder: Path) -> dict[str, Teacher]:
    """The demo's two teachers at the demo's sizes (random weights), saved under `folder` and loaded as `amoe
    distill` loads them; `params.teachers` is pointed at them (the cache's fingerprint hashes their weights)."""
    torch.manual_seed(0)
    specs = []
    for spec in params.teachers:
        path = folder / spec.kind
        build_backbone(spec.kind, getattr(params.demo_teachers, spec.kind)).save_pretrained(path)
        specs.append(spec.model_copy(update={"path": str(path)}))
    params.teachers = specs
    return components.load_teachers(params, torch.device("cpu"))


def student_for(params: Params, teachers: dict[str, Teacher]) -> Student:
    torch.manual_seed(0)
    dims = components.teacher_dims(teachers)
    return build_student(StudentConfig(name="tiny"), dims, params.packing.max_images_per_seq)


def step_fn(params: Params, teachers: dict[str, Teacher], targets: Targets) -> Callable[[PackedBatch], float]:
    """One training step as `amoe distill` runs it (loop.DistillStep, one micro-batch); returns the targets' seconds."""
    student = student_for(params, teachers)
    opt = components.optimizer(params, student)
    loss = components.loss(params, torch.device("cpu"), student)

    def step(batch: PackedBatch) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = targets(batch)
        targets_s = time.perf_counter() - t0
        loss(student(batch), out, batch)["total"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        student.update_balance_bias(1e-3)
        return targets_s

    return step


def interleaved(fns: dict[str, Callable[[PackedBatch], float | None]], batches: list[PackedBatch], warmup: int):
    """Seconds per call of each fn over `batches`, the fns alternating on each batch; plus what each returned."""
    secs: dict[str, list[float]] = {k: [] for k in fns}
    rets: dict[str, list[float]] = {k: [] for k in fns}
    for i, batch in enumerate(batches):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            r = fn(batch)
            if i >= warmup:
                secs[name].append(time.perf_counter() - t0)
                rets[name].append(r or 0.0)
    return secs, rets


def take(loader, n: int) -> list[PackedBatch]:
    out: list[PackedBatch] = []
    for b in loader:
        if len(out) == n:
            break
        out.append(b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="data/shards", help="demo shards; sample shards are made when absent")
    ap.add_argument("--images", type=int, default=1500, help="random subset of the shard set")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    ap.add_argument("--c-max", type=int, default=256, help="tokens per packed sequence")
    ap.add_argument("--seqs", type=int, default=8, help="packed sequences per step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--trial-steps", type=int, default=60, help="distillation steps of a sweep trial (sweep.steps)")
    ap.add_argument("--trials", type=int, default=1, help="sweep trials of each kind (0: skip the trial rows)")
    parse_and_compare(ap, compare, smoke, "sample shards of real photos, not --shards")


def smoke(args: argparse.Namespace, tmp: Path) -> None:
    args.shards = str(sample_shards(tmp, 48))
    args.steps, args.c_max, args.seqs, args.trial_steps = 1, 64, 2, 2


def compare(args: argparse.Namespace) -> None:
    shards = Path(args.shards)
    with tempfile.TemporaryDirectory() as tmp:
        if not (shards / "manifest.parquet").exists():
            print(
                f"{shards}/manifest.parquet not found: using 400 sample photos ingested now (`make demo` for demo shards)"
            )
            shards = sample_shards(Path(tmp), 400)
        run(args, shards, Path(tmp))


def run(args: argparse.Namespace, shards: Path, tmp: Path) -> None:
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    manifest = pd.read_parquet(shards / "manifest.parquet", columns=["key"])
    selection = tmp / "subset.parquet"
    manifest.sample(n=min(args.images, len(manifest)), random_state=0).to_parquet(selection)
    params = Params().model_copy(deep=True)
    params.packing = PackingConfig(c_max=args.c_max, seqs_per_step=args.seqs, max_tokens=64, workers=0)
    warmup = 1
    n = args.steps + warmup
    batches: list[PackedBatch] = []
    for epoch in range(100):  # later epochs: the same images at other grids (few sample photos)
        batches += take(build_loader(params.packing, shards, selection, 0, 0, 1, epoch=epoch), n - len(batches))
        if len(batches) == n:
            break
    else:
        sys.exit(f"{args.images} images give no step of {args.seqs} x {args.c_max} tokens: use more --images")
    teachers = demo_teachers(params, tmp)
    grids = statistics.mean(len({tuple(g) for g in b.image_sizes.tolist()}) for b in batches)
    images = statistics.mean(b.n_images for b in batches)
    tokens = sum(b.n_tokens for b in batches[warmup:])
    print(
        f"steps: {args.seqs} x {args.c_max} tokens, {images:.0f} images of {grids:.0f} distinct grids on average; "
        f"teachers: {', '.join(f'{k} ({t.kind}, {len(list(t.parameters()))} tensors, width {t.dim})' for k, t in teachers.items())}; "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )

    with torch.no_grad():
        fwd, _ = interleaved(
            {
                "packed": lambda b: components.teacher_outputs(teachers, b, packed=True) and None,
                "per-size": lambda b: components.teacher_outputs(teachers, b, packed=False) and None,
            },
            batches,
            warmup,
        )
        for name, t in teachers.items():
            per, _ = interleaved(
                {
                    "packed": lambda b, t=t: t.forward_packed(b) and None,
                    "per-size": lambda b, t=t: t(b.images) and None,
                },
                batches,
                warmup,
            )
            print(
                f"  {name}: {1e3 * statistics.median(per['packed']):.1f} ms packed, "
                f"{1e3 * statistics.median(per['per-size']):.1f} ms per-size per step"
            )
    fwd_p, fwd_s = sum(fwd["packed"]), sum(fwd["per-size"])
    print(
        f"teachers' forward per step: packed {1e3 * fwd_p / args.steps:.1f} ms, per-size {1e3 * fwd_s / args.steps:.1f} ms"
    )

    # the cache `amoe teachers cache` writes for these steps (the same loader stream, epoch after epoch)
    params.distill = params.distill.model_copy(
        update={"shards": shards, "selection": selection, "steps": n, "teacher_cache": tmp / "cache"}
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        teacher_cache.run(params)
    print(f"teacher cache for {n} steps written in {time.perf_counter() - t0:.1f} s")
    cache = teacher_cache.TeacherCache(tmp / "cache", params, teachers)
    steps, teacher_s = interleaved(
        {
            "packed": step_fn(params, teachers, lambda b: components.teacher_outputs(teachers, b, packed=True)),
            "per-size": step_fn(params, teachers, lambda b: components.teacher_outputs(teachers, b, packed=False)),
            "cache": step_fn(params, teachers, cache),
        },
        batches,
        warmup,
    )
    cache.close()
    step_p, step_s = sum(steps["packed"]), sum(steps["per-size"])
    print(f"whole training step real tokens/s: packed teachers {tokens / step_p:.0f}, per-size {tokens / step_s:.0f}")
    print(
        f"teachers' share of a step: packed {sum(teacher_s['packed']) / step_p:.0%}, "
        f"per-size {sum(teacher_s['per-size']) / step_s:.0%}"
    )
    print(f"whole step, packed vs per-size teachers: {step_s / step_p:.2f}x")
    step_c = sum(steps["cache"])
    print(
        f"distillation steps from the cache: {tokens / step_c:.0f} real tokens/s ({sum(teacher_s['cache']) / step_c:.0%} reading targets)"
    )
    print(
        f"distillation steps, cache vs online teachers: {step_p / step_c:.2f}x packed, {step_s / step_c:.2f}x per-size "
        "(at most 1 / (1 - the teachers' share))"
    )
    if args.trials:
        trial_rows(args, params, tmp)
    print(f"load average now {os.getloadavg()[0]:.2f}")
    print(f"teacher forward, packed vs per-size: {fwd_s / fwd_p:.2f}x")


def trial_rows(args: argparse.Namespace, params: Params, tmp: Path) -> None:
    """A sweep trial (`objective.distill_knn`, what `amoe sweep` runs per trial) reading a cache vs online teachers."""
    splits = Path("data/demo/splits")
    overrides = [
        f"distill.runs_dir={tmp / 'trials'}",
        f"distill.steps={args.trial_steps}",
        f"distill.checkpoint_every={args.trial_steps}",
        f"distill.teacher_cache={tmp / 'trial_cache'}",
        f"evaluate.cache={tmp / 'eval_cache'}",
    ]
    on_samples = args.smoke or not splits.is_dir()  # --smoke: seconds, even where `make demo` made the splits
    if on_samples:  # sample photos in two class folders for train and test
        train, test = sample_pool(tmp / "eval_train", 24, seed=1), sample_pool(tmp / "eval_test", 16, seed=2)
        data = f"[{{name: sample, train: 'folder:{train}', test: 'folder:{test}'}}]"
        overrides += [f"evaluate.datasets={data}", "evaluate.ks=[5]", "sweep.k=5", "evaluate.resolutions=[64]"]
        overrides += ["evaluate.probe_epochs=2", "evaluate.probe_lrs=[0.01]", "evaluate.pca_images=1"]
    base = with_overrides(params, overrides)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        teacher_cache.run(base)
    made = time.perf_counter() - t0
    secs: dict[str, list[float]] = {"online": [], "cache": []}
    kinds = (("online", "null"), ("cache", str(base.distill.teacher_cache)))
    # a first, untimed trial: imports and the evaluation's teacher-feature cache (evaluate.cache) warm, as they are
    # in a running sweep after its first trial; then the two kinds alternate, so other load hits both alike
    for i, (kind, cache) in [(-1, kinds[1]), *((i, k) for i in range(args.trials) for k in kinds)]:
        p = with_overrides(base, [f"distill.run={kind}{i}", f"distill.teacher_cache={cache}"])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            objective.distill_knn(optuna.trial.FixedTrial({}), p)
        if i >= 0:
            secs[kind].append(time.perf_counter() - t0)
    online, cached = statistics.median(secs["online"]), statistics.median(secs["cache"])
    gain = online - cached
    print(
        f"sweep trial ({args.trial_steps} steps + evaluation on {'samples' if on_samples else 'the demo splits'}): "
        f"online teachers {online:.1f} s, from the cache {cached:.1f} s; the cache took {made:.1f} s to write"
        + (f", repaid after {made / gain:.1f} trials" if gain > 0 else "")
    )
    print(f"sweep trial, cache vs online teachers: {online / cached:.2f}x")


if __name__ == "__main__":
    main()
