"""The `sweep` section: `amoe sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from amoe_core.config.section import Section


class SweepConfig(Section):
    """`amoe sweep`: Optuna over batching and loss settings, scored by kNN after a short distillation."""

    study: str = Field(
        "amoe-sweep",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Optuna study name, also the prefix of the trials' run ids.",
    )
    storage: str = Field(
        "sqlite:///runs/optuna.db",
        description="Any SQLAlchemy RDB URL of the study (postgresql://... for many workers).",
    )
    n_trials: int = Field(8, ge=1, description="Trials in total, split across the workers.")
    workers: int = Field(1, ge=1, description="Parallel worker processes on this machine, sharing the storage.")
    steps: int = Field(60, ge=1, description="Distillation steps per trial (when token_budget is not set).")
    token_budget: int | None = Field(
        None,
        ge=1,
        description="Fixed compute per trial in tokens: steps = budget / (c_max * seqs_per_step); None = use steps.",
    )
    seed: int = Field(  # numpy seeds are 0 .. 2**32 - 1
        0, ge=0, lt=2**32, description="Seed of the TPE sampler (each worker adds its index)."
    )
    search: list[str] = Field(
        default_factory=list, description="Dimensions of amoe_core/sweep/space.py to search; [] = all."
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="`section.key=value` overrides applied to every trial, e.g. evaluate.resolutions=[64].",
    )
    feature: str = Field(
        "student:ensemble",
        description="Scored feature: the mean over datasets of its `metric` at evaluate.main_resolution.",
    )
    metric: Literal["knn", "linear", "zero_shot", "segmentation", "segmentation.pixel_acc"] = Field(
        "knn",
        description="Scored eval.json metric: knn (at k), linear, zero_shot, segmentation (mIoU), "
        "segmentation.pixel_acc.",
    )
    k: int = Field(20, ge=1, description="Neighbours of the scored kNN accuracy.")
    objective: str = Field(
        "amoe_core.sweep.objective:distill_knn", description="The objective as module:function(trial, params) -> float."
    )
    pruner_startup_trials: int = Field(3, ge=0, description="Median pruning starts once this many trials completed.")
    heartbeat_s: int = Field(
        60,
        ge=1,
        description="Seconds between a trial's heartbeats; a trial whose worker died is failed after 2 and retried once.",
    )
    best_out: Path = Field(
        Path("runs/sweep_best.yaml"),
        description="Best trial written as `-S` overrides for `dvc exp run` / load_params.",
    )
