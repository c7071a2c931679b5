"""The distillation step and loop: teachers (frozen) -> PHI-S targets -> student -> losses -> AdamW step.

One optimizer step consumes `grad_accum` packed batches per rank. Losses are global-batch values (DistillLoss
gathers summaries over ranks, so ARKD relations and per-image averages span the whole global batch). After each
step the MoE selection biases move toward balance (aux-loss-free balancing, DeepSeek-V3 / torchtitan), a record
goes to dvclive (amoe_core/train/live.py), and a checkpoint is written every `checkpoint_every` steps and at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from amoe_core.checkpoints import unwrap
from amoe_core.config.distill import DistillConfig
from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError
from amoe_core.launch.distributed import DistInfo
from amoe_core.models.student import Student
from amoe_core.train.schedule import lr_at, set_lr

log = logging.getLogger(__name__)

TargetsFn = Callable[[PackedBatch], dict[str, Any]]  # batch -> per-teacher targets in PHI-S space
LossFn = Callable[[Any, dict[str, Any], PackedBatch], dict[str, Tensor]]  # (student out, targets, batch) -> terms


@dataclass
class Position:
    """Where the data stream is: `batch` batches of epoch `epoch` consumed by this rank (all ranks move together)."""

    epoch: int = 0
    batch: int = 0


@dataclass
class StepRecord:
    step: int
    lr: float
    grad_norm: float
    losses: dict[str, float]
    expert_load: list[list[float]]
    tokens: int  # real patch tokens in the global batch
    images: int
    seconds: float = 0.0

    def as_metrics(self) -> dict[str, Any]:
        secs = max(self.seconds, 1e-9)
        rec: dict[str, Any] = {"step": self.step, "lr": self.lr, "grad_norm": self.grad_norm}
        rec["tokens_per_s"] = self.tokens / secs
        rec["images_per_s"] = self.images / secs
        rec.update({f"loss/{k}": v for k, v in self.losses.items()})
        rec["expert_load"] = self.expert_load
        return rec


def _all_reduce_(t: Tensor) -> Tensor:
    """Sum a small CPU tensor over ranks in place (through the GPU when the backend is NCCL)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu)
            t.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(t)
    return t


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU (deterministic, exact resume)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class DistillStep:
    """One optimizer step over `grad_accum` micro-batches (DDP gradient sync on the last one only)."""

    def __init__(
        self,
        model: nn.Module,
        targets_fn: TargetsFn,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        cfg: DistillConfig,
        info: DistInfo,
    ) -> None:
        self.model, self.targets_fn, self.loss_fn, self.optimizer = model, targets_fn, loss_fn, optimizer
        self.cfg, self.info = cfg, info
        self.student: Student = unwrap(model)  # type: ignore[assignment]

    def __call__(self, micro_batches: list[PackedBatch], step: int) -> StepRecord:
        cfg, device = self.cfg, self.info.device
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps)
        set_lr(self.optimizer, lr)
        self.model.train()
        sums: dict[str, float] = {}
        load: Tensor | None = None
        counts = torch.zeros(2, dtype=torch.float64)
        for i, batch in enumerate(micro_batches):
            batch = batch.to(device)
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with torch.no_grad(), autocast(device):
                targets = self.targets_fn(batch)
            with sync:
                with autocast(device):
                    out = self.model(batch)
                    terms = self.loss_fn(out, targets, batch)
                total = terms["total"]
                if not torch.isfinite(total):
                    raise AmoeError(f"loss is {float(total)} at step {step}; lower distill.lr or check the data")
                # DistillLoss already returns world_size * local sum / global count, so DDP's gradient average
                # is the gradient of the global-batch mean (amoe_core.losses.features.global_image_mean)
                (total / len(micro_batches)).backward()
            names = sorted(terms)
            values = torch.stack([terms[k].detach().float().cpu() for k in names])
            values = _all_reduce_(values) / self.info.world_size  # rank average = the global-batch value
            for k, v in zip(names, values.tolist()):
                sums[k] = sums.get(k, 0.0) + v / len(micro_batches)
            layers = self.student.moe_layers
            if layers:  # token-slot counts (not per-rank fractions), so the global fraction weights ranks correctly
                counts_e = torch.stack([m.last_load.detach().float().cpu() for m in layers])
                load = counts_e if load is None else load + counts_e
            counts += torch.tensor([batch.n_tokens, batch.n_images], dtype=torch.float64)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.student.update_balance_bias(cfg.balance_update_rate)
        _all_reduce_(counts)
        if load is not None:
            load = _all_reduce_(load)
            load = load / load.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # fraction of routed slots per layer
        return StepRecord(
            step=step,
            lr=lr,
            grad_norm=float(grad_norm),
            losses=sums,
            expert_load=[] if load is None else load.tolist(),
            tokens=int(counts[0]),
            images=int(counts[1]),
        )


def batches_forever(make_loader: Callable[[int, int], Any], position: Position) -> Iterator[PackedBatch]:
    """This rank's batches from `position` on, epoch after epoch; `position` is advanced as batches are taken."""
    while True:
        loader = make_loader(position.epoch, position.batch)
        if len(loader) == 0 and position.batch == 0:
            raise AmoeError("the training set yields no complete step; use more images or fewer packing.seqs_per_step")
        for batch in loader:
            position.batch += 1
            yield batch
        position.epoch, position.batch = position.epoch + 1, 0


def timed(fn: Callable[[], StepRecord]) -> StepRecord:
    t0 = time.perf_counter()
    rec = fn()
    rec.seconds = time.perf_counter() - t0
    return rec


def position_dict(p: Position) -> dict[str, int]:
    return asdict(p)


class StopSignals:
    """SIGTERM (a cluster preempting, `kill`) and SIGINT (Ctrl-C) during training: the first one is noted and the
    loop stops after the step in progress, with a checkpoint (`requested`); a second one ends the process at once.

    Installed only where the signal still has its default behaviour and only from the main thread: under submitit
    its own handlers stay (SLURM preemption goes through the preemption hooks, amoe_core/launch/submit.py).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is defaults[sig]:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one: the user means now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: stopping after this step with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)  # fmt: skip

    def requested(self) -> int | None:
        """The signal to stop for, agreed by every rank (ranks may receive it a step apart)."""
        flag = torch.tensor([float(self.signum or 0)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = _all_reduce_(flag)  # the sum is > 0 when any rank got one; its own number is enough to exit
            return (self.signum or int(signal.SIGTERM)) if float(flag) > 0 else None
        return self.signum

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
