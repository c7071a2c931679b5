"""The `distill` section: `amoe distill` (the run, its optimiser and checkpointing)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from amoe_core.config.section import Section


class DistillConfig(Section):
    """`amoe distill`: the distillation run."""

    run: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    # The training seed (student init, data order, per-image token budgets). The top-level `seed` fixes the data:
    # demo pool, teachers, curation and evaluation splits, so seed repeats of an ablation share all of those.
    seed: int = Field(0, ge=0, lt=2**32)  # numpy seeds are 0 .. 2**32 - 1
    runs_dir: Path = Path("runs")
    shards: Path = Path("data/shards")
    selection: Path | None = Path("data/curation/selection/balanced.parquet")  # None = every image of the shards
    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0, le=10)  # AdamW moves each weight by about lr per step: beyond 10 it diverges at once
    min_lr: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(3, ge=1)  # newest complete checkpoints kept on disk
    log_every: int = Field(1, ge=1)
    compile: bool = False
    deterministic: bool = True
    balance_update_rate: float = Field(1e-3, ge=0)
    # `amoe teachers cache` writes the teachers' outputs here; when set, distillation reads its targets from it
    # instead of running the teachers (amoe_core/train/teacher_cache.py says when a cache is valid)
    teacher_cache: Path | None = None
    teacher_cache_dtype: Literal["bfloat16", "float16"] = "bfloat16"

    @field_validator("run")
    @classmethod
    def _folder_name(cls, run: str) -> str:
        if run in (".", ".."):  # a folder name under runs_dir, not runs_dir itself or its parent
            raise ValueError("must name a run folder, not . or ..")
        if run.startswith("."):  # hidden names are the locks and temporaries beside runs (`.lk.lock` is run lk's)
            raise ValueError("must not start with a dot")
        return run
