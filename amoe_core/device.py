"""Where and how this process computes: the device (CUDA when there is one), the teachers' dtype, the CPU threads.

CPU thread budget: small models on a few cores are dominated by OpenMP barrier waits when threads compete. Measured on 2 cores with one loader worker: the tiny student trains ~10x faster with 1 intra-op thread than with
2, because the second thread spins against the loader process. So each process gets the cores left after the
data-loading workers, shared among the processes on this node.
"""

from __future__ import annotations

import os

import torch


def cpu_thread_budget(loader_workers: int, local_processes: int = 1) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes) - loader_workers)


def set_cpu_threads(loader_workers: int, local_processes: int = 1) -> int:
    """Apply the budget unless the user pinned OMP_NUM_THREADS; returns the thread count in effect."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_thread_budget(loader_workers, local_processes))
    return torch.get_num_threads()


def pick_device(local_rank: int | None = None) -> torch.device:
    """CUDA when this machine has it, else the CPU. With `local_rank` (a torchrun process) the GPU of that rank
    (round-robin over the visible GPUs); without, the current CUDA device."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """Frozen models (the teachers, forward only) run in bf16 on CUDA and in float32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
