"""torch.distributed set-up from torchrun's variables or submitit's job environment (gloo on CPU, NCCL on GPU).

The same `run(params)` works alone, under `torchrun --nproc-per-node N` and inside a multi-task submitit job (SLURM or
local executor): `init_distributed()` looks at the environment, initialises the default process group when there is
more than one process, and reports rank, world size and the device this process should use.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from submitit.helpers import TorchDistributedEnvironment

from amoe_core.device import pick_device

log = logging.getLogger(__name__)

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _export_submitit_env() -> bool:
    """Inside a submitit job, export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for the env:// rendezvous."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False  # torchrun (or a parent) already set them
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return False
    try:
        env = TorchDistributedEnvironment()
    except RuntimeError:  # not actually inside a job
        return False
    # one GPU per task: keep CUDA_VISIBLE_DEVICES when the scheduler already bound one device to this task
    pin = torch.cuda.device_count() > 1
    env.export(set_cuda_visible_devices=pin, overwrite=True)
    return True


def current_info() -> DistInfo:
    """Rank/world size of this process (after `init_distributed`), without initialising anything."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=pick_device(local_rank))


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialise the default process group when this process is one of several; idempotent."""
    _export_submitit_env()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "gloo" and os.environ.get("MASTER_ADDR", "") in _LOOPBACK:
            # gloo binds to the interface of the machine's hostname unless told otherwise; on one machine
            # (the dev cluster, a laptop) that may be an address the peers never dial.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        info = current_info()
        if info.device.type == "cuda":
            torch.cuda.set_device(info.device)
        dist.init_process_group(backend=backend, init_method="env://")
        log.info("torch.distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return current_info()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---- preemption: submitit's checkpoint() runs in a signal handler on rank 0; running stages register what to save
_PREEMPTION_HOOKS: list = []


def register_preemption_hook(fn) -> None:  # noqa: ANN001 - any zero-argument callable
    _PREEMPTION_HOOKS.append(fn)


def unregister_preemption_hook(fn) -> None:  # noqa: ANN001
    if fn in _PREEMPTION_HOOKS:
        _PREEMPTION_HOOKS.remove(fn)


def run_preemption_hooks() -> None:
    for fn in list(_PREEMPTION_HOOKS):
        try:
            fn()
        except Exception:  # a failed save must not stop the requeue: the last periodic checkpoint still exists
            log.exception("preemption hook failed")


def world_check() -> dict[str, object]:
    """A diagnostic job: initialise, all-reduce (rank + 1) over the world, report what this process saw.

    Submitting it with N tasks answers "does torch.distributed work on this allocation?" in seconds.
    """
    info = init_distributed()
    t = torch.tensor([float(info.rank + 1)], device=info.device)
    if info.distributed:
        dist.all_reduce(t)
    backend = dist.get_backend() if dist.is_initialized() else None
    cleanup_distributed()
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "sum": float(t.item()),
        "backend": backend,
        "host": socket.gethostname(),
    }


def gather_json(obj: object) -> dict[str, object]:
    """{str(rank): obj of that rank} on every rank (small JSON-able objects, e.g. RNG states for a checkpoint)."""
    if not (dist.is_available() and dist.is_initialized()):
        return {"0": obj}
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return {str(r): o for r, o in enumerate(out)}


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of `module` from rank `src` (e.g. PHI-S fitted on rank 0, or a resumed state).

    DDP syncs parameters at construction, but buffers only with `broadcast_buffers=True`, which the trainer turns
    off (per-rank MoE load counters must not be overwritten every forward)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in module.state_dict().values():
        dist.broadcast(t, src=src)
