"""`amoe distill [--resume]`: multi-teacher distillation of the MoE student (AMoE / SigLino, arXiv 2512.20157).

run(params) works alone on a CPU, under torchrun and inside a multi-task submitit job: torch.distributed is
initialised from the environment, the student is wrapped in DDP when there is more than one process, and rank 0
writes the run directory (params, PHI-S fit, metrics, dvclive, checkpoints). Steps:
1. teachers load frozen; the student is built (optionally from released SigLino weights, `student.init`); PHI-S is
   fitted on a sample of teacher features (Ranzinger et al., PHI-S) and saved with the run: the loss compares
   student and teacher features after it (the model itself predicts raw teacher features);
2. the student trains with AdamW, warmup + cosine, gradient clipping and accumulation (loop.DistillStep);
3. `resume=True` continues from the last complete checkpoint exactly (weights, optimizer, RNG, data position).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amoe_core.config import Params, dump_params
from amoe_core.device import set_cpu_threads
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_write_json
from amoe_core.launch import distributed
from amoe_core.outputs import claim_outputs, mark_output, written_by
from amoe_core.progress import progress
from amoe_core.tracking.runs import RunDir
from amoe_core.train import components
from amoe_core.train.checkpoint import (
    STUDENT_SPEC,
    latest_checkpoint,
    resumable_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    student_spec,
    unwrap,
)
from amoe_core.train.live import LiveLog
from amoe_core.train.loop import DistillStep, Position, batches_forever, position_dict, timed, trim_records

log = logging.getLogger(__name__)
RUN_OUTPUT = "distill.run"  # the marker a run directory carries (amoe_core/outputs.py)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (exact resume on CPU); CUDA needs a fixed cuBLAS workspace for that."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)


def run(params: Params, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) run `distill.run`; returns a summary {run, steps, rank, world_size, final losses}."""
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        with _claim_run(params):
            return _run(params, resume)
    finally:  # the process may go on (tests, sweeps): leave global torch settings as they were
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _claim_run(params: Params) -> contextlib.AbstractContextManager:
    """Rank 0 owns runs/<run> for the whole attempt: a second `amoe distill` on the same run is refused at once, and
    a directory that is not a run is never written into (amoe_core/outputs.py)."""
    if not distributed.init_distributed().is_main:  # idempotent; also exports a submitit job's RANK
        return contextlib.nullcontext()
    run_dir = RunDir(Path(params.distill.runs_dir) / params.distill.run)
    if written_by(run_dir.path) is None and run_dir.has_records():  # a run from before output markers
        mark_output(run_dir.path, RUN_OUTPUT)
    return claim_outputs({"distill.run": run_dir.path}, owner=RUN_OUTPUT)


def _run(params: Params, resume: bool) -> dict[str, Any]:
    cfg = params.distill
    require_path("distill.shards", cfg.shards, "shard directory")
    if cfg.selection is not None:
        require_path("distill.selection", cfg.selection, "selection parquet")
    info = distributed.init_distributed()
    run_dir = RunDir(Path(cfg.runs_dir) / cfg.run)
    resumed, skipped = resumable_checkpoint(run_dir.checkpoints, info.device) if resume else (None, [])
    ckpt = resumed.path if resumed is not None else None
    if not resume and (run_dir.exists() or latest_checkpoint(run_dir.checkpoints) is not None):
        raise AmoeError(f"run {run_dir.path} already exists; pass --resume to continue it or set distill.run")
    distributed.barrier()  # every rank has looked before rank 0 creates anything
    set_deterministic(cfg.deterministic)
    if info.device.type == "cpu":
        set_cpu_threads(params.packing.workers, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    seed_everything(params.distill.seed + info.rank)
    if info.is_main:
        if ckpt is None:  # from step 0: drop records an earlier run here left (`dvc repro` removes only its outs)
            if resume and run_dir.exists():
                log.warning("no complete checkpoint in %s: starting the run from step 0", run_dir.checkpoints)
            trim_records(run_dir.metrics_file, 0)
            run_dir.train_file.unlink(missing_ok=True)
        run_dir = RunDir.create(cfg.runs_dir, cfg.run)
        mark_output(run_dir.path, RUN_OUTPUT)
        for why in skipped:
            log.warning("resume: skipped unreadable checkpoint %s", why)
            run_dir.event(f"resume: skipped unreadable checkpoint {why}")
        start = f"resume from {ckpt.name}" if ckpt else "start"
        attempt = run_dir.record_attempt(dump_params(params), start)
        run_dir.event(f"{start} (attempt {attempt}, world size {info.world_size})")
    distributed.barrier()

    def make_loader(epoch: int, start: int):  # noqa: ANN202
        return components.loader(params, info, epoch, start)

    teachers = components.load_teachers(params, info.device)
    student = components.build(params, teachers, info.device)
    if info.is_main and not (run_dir.path / STUDENT_SPEC).exists():
        atomic_write_json(run_dir.path / STUDENT_SPEC, student_spec(params, teachers))
    if ckpt is None and info.is_main:  # PHI-S on rank 0; wrapping broadcasts it with the weights
        log.info("fitting PHI-S on %d images of teacher features (a minute on CPU)", params.loss.phis_samples)
        fitted = components.fit_phis(student, teachers, make_loader(0, 0), params.loss.phis_samples)
        components.save_phis(student, run_dir.path)
        run_dir.event(f"PHI-S fitted on {fitted['images']} images")
        log.info("PHI-S fitted on %d images; training %s for %d steps", fitted["images"], cfg.run, cfg.steps)
    optimizer = components.optimizer(params, student)
    position, step = Position(), 0
    if resumed is not None:
        state = resumed.state
        unwrap(student).load_state_dict(resumed.model)
        if resumed.optimizer is not None:
            optimizer.load_state_dict(resumed.optimizer)
        step = int(state["step"])
        position = Position(**state["data"])
        if state.get("world_size", 1) != info.world_size:
            raise AmoeError(
                f"checkpoint {ckpt} was written by {state.get('world_size')} processes, this job has "
                f"{info.world_size}; the data position is per rank, so resume with the same world size"
            )
        rngs = state.get("rng", {})
        if str(info.rank) in rngs:
            set_rng_state(rngs[str(info.rank)])
        if info.is_main:
            trim_records(run_dir.metrics_file, step)
    model = components.wrap(student, info, compile_model=cfg.compile)
    loss_fn = components.loss(params, info.device, student)
    targets = components.targets_fn(teachers)
    step_fn = DistillStep(model, targets, loss_fn, optimizer, cfg, info)
    live = LiveLog(run_dir.path / "dvclive", resume=ckpt is not None, step=step) if info.is_main else None

    def checkpoint_now(at_step: int, collective: bool = True) -> None:
        # every rank's generators (rank 0 writes); from a signal handler only rank 0 runs, so no collectives there
        rngs = distributed.gather_json(rng_state()) if collective else {str(info.rank): rng_state()}
        if info.is_main:
            state = {
                "data": position_dict(position),
                "world_size": info.world_size,
                "rng": rngs,
                "schedule": {"kind": "warmup_cosine", "step": at_step},
            }
            path = save_checkpoint(run_dir.checkpoints, at_step, student, optimizer, state, keep=cfg.keep_checkpoints)
            run_dir.event(f"checkpoint {path.name}")
        if collective:
            distributed.barrier()

    busy = [False]  # inside a step, its logging or its checkpoint

    def on_preemption() -> None:
        # submitit calls checkpoint() in a signal handler on rank 0: the state is consistent only between steps
        # (all ranks move in lockstep, so rank 0's weights and data position are everyone's)
        if not busy[0] and step > 0:
            checkpoint_now(step, collective=False)
            run_dir.event(f"preempted at step {step}: checkpoint written, requeue")
        else:
            run_dir.event(f"preempted during step {step + 1}: requeue from the last checkpoint")

    distributed.register_preemption_hook(on_preemption)
    stream = batches_forever(make_loader, position)
    bar = progress(total=cfg.steps, initial=step, desc=f"distill {cfg.run}", unit="step") if info.is_main else None
    last: dict[str, Any] = {}
    seen = {"images": 0}
    try:
        while step < cfg.steps:
            busy[0] = True  # from here until the step is counted, the data position runs ahead of the weights
            micro = [next(stream) for _ in range(cfg.grad_accum)]
            seen["images"] += sum(b.n_images for b in micro)
            rec = timed(lambda: step_fn(micro, step))  # noqa: B023 - called at once
            step += 1
            rec.step = step
            last = rec.as_metrics()
            if info.is_main:
                if step % cfg.log_every == 0 or step == cfg.steps:
                    run_dir.log_metrics(last)
                    live.log(last)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{rec.losses.get('total', float('nan')):.4f}", tok_s=f"{last['tokens_per_s']:.0f}"
                )
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint_now(step)
            busy[0] = False
    finally:
        distributed.unregister_preemption_hook(on_preemption)
        if bar is not None:
            bar.close()
        if live is not None:
            live.close()
    if info.is_main and step >= cfg.steps:
        run_dir.write_train_summary()
    # every rank reports its own share, so the run directory shows all ranks' work
    run_dir.event(f"rank {info.rank}/{info.world_size} done at step {step}: {seen['images']} images this rank")
    return {
        "run": cfg.run,
        "steps": step,
        "rank": info.rank,
        "world_size": info.world_size,
        "loss": {k[5:]: v for k, v in last.items() if k.startswith("loss/")},
    }
