"""The `launch` section: `amoe submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from amoe_core.config.section import Section


class LaunchConfig(Section):
    """`amoe submit`: where and how a stage runs (submitit)."""

    executor: Literal["auto", "slurm", "local", "debug"] = Field(
        "auto",
        description="Where a stage runs: auto = slurm when `sinfo` answers, else local; debug runs in this process.",
    )
    folder: Path = Field(
        Path("runs/_submitit"), description="submitit's folder of job scripts, logs and pickled results."
    )
    nodes: int = Field(1, ge=1, description="Nodes per job.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs requested per node.")
    tasks_per_node: int = Field(1, ge=1, description="Processes per node (one per GPU for distributed training).")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per process.")
    mem_gb: float = Field(4, gt=0, description="Memory per node in GB.")
    timeout_min: int = Field(
        60, ge=1, description="Job time limit in minutes; a job that reaches it is requeued (up to max_requeues)."
    )
    partition: str | None = Field(None, description="SLURM partition (None = the cluster's default).")
    account: str | None = Field(None, description="SLURM account to charge (None = your default).")
    qos: str | None = Field(None, description="SLURM quality of service (None = the default).")
    signal_delay_s: int = Field(
        90, ge=0, description="Seconds before the time limit at which SLURM signals the job to checkpoint."
    )
    max_requeues: int = Field(3, ge=0, description="Times a timed-out job is requeued (preemptions do not count).")
    slurm_extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further sbatch options passed as they are (submitit's slurm_additional_parameters).",
    )
