"""submitit executors from the `launch:` section of params.yaml: auto (SLURM if reachable, else local), slurm, local,
debug (in-process, drops into pdb on failure)."""

from __future__ import annotations

import logging
from pathlib import Path

import submitit

from amoe_core.config.launch import LaunchConfig
from amoe_core.errors import AmoeError
from amoe_core.launch.cluster import slurm_available

log = logging.getLogger(__name__)


def resolve_kind(launch: LaunchConfig) -> str:
    """The executor kind that will actually run: `auto` becomes `slurm` when `sinfo` answers, else `local`."""
    if launch.executor != "auto":
        return launch.executor
    kind = "slurm" if slurm_available() else "local"
    log.info("executor auto -> %s", kind)
    return kind


def make_executor(launch: LaunchConfig, name: str, folder: Path | None = None) -> submitit.Executor:
    """A configured submitit executor; job logs and pickles go to `folder` (default launch.folder/%j)."""
    kind = resolve_kind(launch)
    folder = Path(folder or launch.folder) / "%j"
    if kind == "slurm" and not slurm_available():
        raise AmoeError("launch.executor = 'slurm' but no SLURM controller answers `sinfo`; start one or use local")
    # timeouts requeue at most max_requeues times (preemptions do not count: submitit's own rule)
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, slurm_max_num_timeout=launch.max_requeues)
    params: dict = dict(
        name=name,
        timeout_min=launch.timeout_min,
        nodes=launch.nodes,
        tasks_per_node=launch.tasks_per_node,
        cpus_per_task=launch.cpus_per_task,
        gpus_per_node=launch.gpus_per_node,
    )
    if kind == "slurm":
        params.update(
            mem_gb=launch.mem_gb,
            slurm_partition=launch.partition,
            slurm_signal_delay_s=launch.signal_delay_s,
        )
        if launch.account:
            params["slurm_account"] = launch.account
        if launch.qos:
            params["slurm_qos"] = launch.qos
        if launch.slurm_extra:
            params["slurm_additional_parameters"] = dict(launch.slurm_extra)
        params = {k: v for k, v in params.items() if v is not None}
    elif kind == "local":
        if launch.nodes > 1:
            raise AmoeError(f"launch.nodes = {launch.nodes}: the local executor runs on this machine only; set 1")
        params.update(mem_gb=launch.mem_gb)
    else:  # debug: in-process, one task
        params = dict(name=name, timeout_min=launch.timeout_min)
    executor.update_parameters(**params)
    return executor
