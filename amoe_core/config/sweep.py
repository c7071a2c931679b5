"""The `sweep` section: `amoe sweep`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class SweepConfig(Section):
    """`amoe sweep`: Optuna over batching and loss settings, scored by kNN after a short distillation."""

    study: str = Field("amoe-sweep", pattern=r"^[A-Za-z0-9_.-]+$")  # also the prefix of the trials' run ids
    storage: str = "sqlite:///runs/optuna.db"  # any SQLAlchemy RDB URL (postgresql://... for many workers)
    n_trials: int = Field(8, ge=1)  # in total, split across the workers
    workers: int = Field(1, ge=1)  # parallel worker processes on this machine, sharing the storage
    steps: int = Field(60, ge=1)  # distillation steps per trial (when token_budget is not set)
    token_budget: int | None = Field(None, ge=1)  # fixed compute: steps = budget / (c_max * seqs_per_step)
    seed: int = 0
    search: list[str] = Field(default_factory=list)  # dimensions of amoe_core/sweep/space.py to search; [] = all
    overrides: list[str] = Field(default_factory=list)  # applied to every trial, e.g. evaluate.resolutions=[64]
    feature: str = "student:ensemble"  # scored feature: mean over datasets of kNN at evaluate.main_resolution
    k: int = Field(20, ge=1)
    objective: str = "amoe_core.sweep.objective:distill_knn"  # module:function(trial, params) -> float
    pruner_startup_trials: int = Field(3, ge=0)  # median pruning starts once this many trials completed
    heartbeat_s: int = Field(60, ge=1)  # a trial whose worker died is failed after 2 heartbeats and retried once
    best_out: Path = Path("runs/sweep_best.yaml")  # best trial as `-S` overrides for `dvc exp run` / load_params
