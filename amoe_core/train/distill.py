"""`amoe distill [--resume]`: multi-teacher distillation of the MoE student (AMoE / SigLino, arXiv 2512.20157).

run(params) works alone on a CPU, under torchrun and inside a multi-task submitit job: torch.distributed is
initialised from the environment, the student is wrapped in DDP when there is more than one process, and rank 0
writes the run directory (params, PHI-S fit, dvclive curves, train.json summary, checkpoints). Steps:
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
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from amoe_core.checkpoints import (
    Checkpoint,
    latest_checkpoint,
    resumable_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from amoe_core.config.section import dump_params
from amoe_core.device import set_cpu_threads
from amoe_core.errors import AmoeError, require_path
from amoe_core.io import atomic_write_json, mark_output, written_by
from amoe_core.launch import distributed
from amoe_core.models.trained import STUDENT_SPEC, student_spec
from amoe_core.outputs import claim_outputs
from amoe_core.progress import progress
from amoe_core.tracking.runs import RunDir
from amoe_core.train import components
from amoe_core.train.live import LiveLog
from amoe_core.train.loop import (
    DistillStep,
    Position,
    StopSignals,
    batches_forever,
    position_dict,
    timed,
)
from amoe_core.train.teacher_cache import TeacherCache

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

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


def check_inputs(params: Params) -> None:
    """The files a run reads that earlier stages make: missing ones stop it (and a sweep) before any work."""
    cfg = params.distill
    require_path("distill.shards", cfg.shards, "shard directory")
    if cfg.selection is not None:
        require_path("distill.selection", cfg.selection, "selection parquet")


def _run(params: Params, resume: bool) -> dict[str, Any]:
    cfg = params.distill
    check_inputs(params)
    info = distributed.init_distributed()
    run_dir = RunDir(Path(cfg.runs_dir) / cfg.run)
    resumed, skipped = resumable_checkpoint(run_dir.checkpoints, info.device) if resume else (None, [])
    if not resume and (run_dir.exists() or latest_checkpoint(run_dir.checkpoints) is not None):
        raise AmoeError(f"run {run_dir.path} already exists; pass --resume to continue it or set distill.run")
    distributed.barrier()  # every rank has looked before rank 0 creates anything
    set_deterministic(cfg.deterministic)
    if info.device.type == "cpu":
        set_cpu_threads(params.packing.workers, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    seed_everything(params.distill.seed + info.rank)
    if info.is_main:
        run_dir = _start_attempt(params, run_dir, resumed, skipped, resume, info.world_size)
    distributed.barrier()
    trainer = Trainer(params, info, run_dir, resumed)
    distributed.register_preemption_hook(trainer.on_preemption)
    try:
        trainer.train()
    finally:
        distributed.unregister_preemption_hook(trainer.on_preemption)
        trainer.close()
    return trainer.finish()


def _start_attempt(
    params: Params, run_dir: RunDir, resumed: Checkpoint | None, skipped: list[str], resume: bool, world_size: int
) -> RunDir:
    """Rank 0: create (or reopen) the run directory and record this attempt's params and start in it."""
    if resumed is None:  # from step 0: drop records an earlier run here left (`dvc repro` removes only its outs)
        if resume and run_dir.exists():
            log.warning("no complete checkpoint in %s: starting the run from step 0", run_dir.checkpoints)
        run_dir.train_file.unlink(missing_ok=True)
        shutil.rmtree(run_dir.live_dir, ignore_errors=True)  # dvclive would too, but only once the models are built
    run_dir = RunDir.create(params.distill.runs_dir, params.distill.run)
    mark_output(run_dir.path, RUN_OUTPUT)
    for why in skipped:
        log.warning("resume: skipped unreadable checkpoint %s", why)
        run_dir.event(f"resume: skipped unreadable checkpoint {why}")
    start = f"resume from {resumed.path.name}" if resumed is not None else "start"
    attempt = run_dir.record_attempt(dump_params(params), start)
    run_dir.event(f"{start} (attempt {attempt}, world size {world_size})")
    return run_dir


class Trainer:
    """One attempt's training state: models, optimizer, the step and data position, and the logs they feed.

    `step` and `position` move together between steps; `busy` is set while a step runs (its data already taken, its
    weights not yet updated), when a preemption must not write a checkpoint.
    """

    def __init__(self, params: Params, info: distributed.DistInfo, run_dir: RunDir, resumed: Checkpoint | None) -> None:
        self.params, self.cfg, self.info, self.run_dir = params, params.distill, info, run_dir
        teachers = components.load_teachers(params, info.device)
        self.student = components.build(params, teachers, info.device)
        if info.is_main and not (run_dir.path / STUDENT_SPEC).exists():
            atomic_write_json(run_dir.path / STUDENT_SPEC, student_spec(params, teachers, self.student))
        # targets: the teachers (packed forward), or their outputs read from distill.teacher_cache
        self.cache = TeacherCache(self.cfg.teacher_cache, params, teachers) if self.cfg.teacher_cache else None
        targets = self.cache if self.cache is not None else components.targets_fn(teachers)
        if resumed is None and info.is_main:  # PHI-S on rank 0; wrapping broadcasts it with the weights
            self._fit_phis(targets)
        self.optimizer = components.optimizer(params, self.student)
        self.step, self.position = 0, Position()
        if resumed is not None:
            self._restore(resumed)
        model = components.wrap(self.student, info, compile_model=self.cfg.compile)
        loss_fn = components.loss(params, info.device, self.student)
        self.step_fn = DistillStep(model, targets, loss_fn, self.optimizer, self.cfg, info)
        self.busy = False
        self.images_seen = 0  # this rank's, this attempt's
        self.last: dict[str, Any] = {}  # the last step's metrics
        self.stream = batches_forever(self._loader, self.position)
        self.live = LiveLog(run_dir.live_dir, resume=resumed is not None) if info.is_main else None
        self.bar = (
            progress(total=self.cfg.steps, initial=self.step, desc=f"distill {self.cfg.run}", unit="step")
            if info.is_main
            else None
        )

    def _loader(self, epoch: int, start: int) -> Any:
        return components.loader(self.params, self.info, epoch, start)

    def _fit_phis(self, targets: Any) -> None:
        log.info("fitting PHI-S on %d images of teacher features (a minute on CPU)", self.params.loss.phis_samples)
        fitted = components.fit_phis(self.student, targets, self._loader(0, 0), self.params.loss.phis_samples)
        components.save_phis(self.student, self.run_dir.path)
        self.run_dir.event(f"PHI-S fitted on {fitted['images']} images")
        log.info("PHI-S fitted on %d images; training %s for %d steps", fitted["images"], self.cfg.run, self.cfg.steps)

    def _restore(self, resumed: Checkpoint) -> None:
        """Weights, optimizer, step, data position and this rank's RNG from the checkpoint being resumed."""
        state = resumed.state
        unwrap(self.student).load_state_dict(resumed.model)
        if resumed.optimizer is not None:
            self.optimizer.load_state_dict(resumed.optimizer)
        self.step = int(state["step"])
        self.position = Position(**state["data"])
        if state.get("world_size", 1) != self.info.world_size:
            raise AmoeError(
                f"checkpoint {resumed.path} was written by {state.get('world_size')} processes, this job has "
                f"{self.info.world_size}; the data position is per rank, so resume with the same world size"
            )
        rngs = state.get("rng", {})
        if str(self.info.rank) in rngs:
            set_rng_state(rngs[str(self.info.rank)])

    def train(self) -> None:
        with StopSignals() as signals:
            self._train(signals)

    def _train(self, signals: StopSignals) -> None:
        while self.step < self.cfg.steps:
            self.busy = True  # from here until the step is counted, the data position runs ahead of the weights
            micro = [next(self.stream) for _ in range(self.cfg.grad_accum)]
            self.images_seen += sum(b.n_images for b in micro)
            rec = timed(lambda: self.step_fn(micro, self.step))  # noqa: B023 - called at once
            self.step += 1
            rec.step = self.step
            self.last = rec.as_metrics()
            if self.info.is_main:
                self._log(rec.losses.get("total", float("nan")))
            saved = self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps
            if saved:
                self.checkpoint(self.step)
            self.busy = False
            if self.step < self.cfg.steps and (signum := signals.requested()) is not None:
                self._stop(signum, saved)

    def _stop(self, signum: int, saved: bool) -> None:
        """Stopped by SIGTERM / SIGINT between two steps: checkpoint, then exit with the signal's code (128 + n,
        what a shell shows for a process the signal ended) so schedulers and scripts see why it stopped."""
        if not saved:
            self.checkpoint(self.step)
        name = signal.Signals(signum).name
        if self.info.is_main:
            self.run_dir.event(f"stopped by {name} after step {self.step}: checkpoint written")
            log.warning("stopped by %s after step %d: checkpoint written; continue with `amoe distill --resume`",
                        name, self.step)  # fmt: skip
        raise SystemExit(128 + signum)

    def _log(self, total_loss: float) -> None:
        """Rank 0: metrics every `log_every` steps and at the end; the progress bar every step."""
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
            self.live.log(self.last)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{total_loss:.4f}", tok_s=f"{self.last['tokens_per_s']:.0f}")

    def checkpoint(self, at_step: int, collective: bool = True) -> None:
        """Every rank's generators (rank 0 writes); from a signal handler only rank 0 runs, so no collectives there."""
        info = self.info
        rngs = distributed.gather_json(rng_state()) if collective else {str(info.rank): rng_state()}
        if info.is_main:
            state = {
                "data": position_dict(self.position),
                "world_size": info.world_size,
                "rng": rngs,
                "schedule": {"kind": "warmup_cosine", "step": at_step},
            }
            path = save_checkpoint(
                self.run_dir.checkpoints, at_step, self.student, self.optimizer, state, keep=self.cfg.keep_checkpoints
            )
            self.run_dir.event(f"checkpoint {path.name}")
        if collective:
            distributed.barrier()

    def on_preemption(self) -> None:
        """submitit calls checkpoint() in a signal handler on rank 0: the state is consistent only between steps
        (all ranks move in lockstep, so rank 0's weights and data position are everyone's)."""
        if not self.busy and self.step > 0:
            self.checkpoint(self.step, collective=False)
            self.run_dir.event(f"preempted at step {self.step}: checkpoint written, requeue")
        else:
            self.run_dir.event(f"preempted during step {self.step + 1}: requeue from the last checkpoint")

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self.bar is not None:
            self.bar.close()
        if self.live is not None:
            self.live.close()

    def finish(self) -> dict[str, Any]:
        """The run's summary files (rank 0, when all steps are done) and this rank's summary."""
        info, step = self.info, self.step
        if info.is_main and step >= self.cfg.steps:
            self.run_dir.write_train_summary()
        # every rank reports its own share, so the run directory shows all ranks' work
        self.run_dir.event(
            f"rank {info.rank}/{info.world_size} done at step {step}: {self.images_seen} images this rank"
        )
        return {
            "run": self.cfg.run,
            "steps": step,
            "rank": info.rank,
            "world_size": info.world_size,
            "loss": {k[5:]: v for k, v in self.last.items() if k.startswith("loss/")},
        }
