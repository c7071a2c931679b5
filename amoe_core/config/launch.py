"""The `launch` section: `amoe submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from amoe_core.config.section import Section


class LaunchConfig(Section):
    """`amoe submit`: where and how a stage runs (submitit)."""

    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    folder: Path = Path("runs/_submitit")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int = Field(1, ge=1)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float = Field(4, gt=0)
    timeout_min: int = Field(60, ge=1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int = Field(90, ge=0)
    max_requeues: int = Field(3, ge=0)
    slurm_extra: dict[str, Any] = Field(default_factory=dict)
