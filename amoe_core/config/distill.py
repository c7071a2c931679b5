"""The `distill` section: `amoe distill` (the run, its optimiser and checkpointing)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from amoe_core.config.section import Section


class DistillConfig(Section):
    """`amoe distill`: the distillation run."""

    run: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="Run id: the run's folder under runs_dir.")
    # The top-level `seed` fixes the data: demo pool, teachers, curation and evaluation splits, so seed repeats of an
    # ablation share all of those.
    seed: int = Field(  # numpy seeds are 0 .. 2**32 - 1
        0, ge=0, lt=2**32, description="Training seed: student init, data order and per-image token budgets."
    )
    runs_dir: Path = Field(Path("runs"), description="Folder holding one folder per run.")
    shards: Path = Field(Path("data/shards"), description="Shard set to train on (written by `amoe data ingest`).")
    selection: Path | None = Field(
        Path("data/curation/selection/balanced.parquet"),
        description="Curated selection .parquet (from `amoe curate sample`); None = every image of the shards.",
    )
    steps: int = Field(300, ge=1, description="Optimiser steps of the run.")
    # le=10: AdamW moves each weight by about lr per step, beyond 10 it diverges at once
    lr: float = Field(
        1e-3, gt=0, le=10, description="Peak AdamW learning rate, after warm-up, then cosine decay to min_lr."
    )
    min_lr: float = Field(1e-5, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(30, ge=0, description="Steps of linear learning-rate warm-up.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clipped to this value.")
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimiser step (a larger batch in the same memory)."
    )
    checkpoint_every: int = Field(
        100, ge=1, description="Steps between checkpoints (a resume loses at most this many)."
    )
    keep_checkpoints: int = Field(3, ge=1, description="Newest complete checkpoints kept on disk.")
    log_every: int = Field(1, ge=1, description="Steps between logged metrics (and at the end).")
    compile: bool = Field(False, description="torch.compile the student (faster on GPU after a compile pause).")
    deterministic: bool = Field(
        True, description="Deterministic torch kernels, so a rerun repeats the numbers (slower on GPU)."
    )
    balance_update_rate: float = Field(
        1e-3,
        ge=0,
        description="Step of the aux-loss-free MoE router-bias update after each optimiser step; 0 = no balancing.",
    )
    teacher_cache: Path | None = Field(
        None,
        description="Teacher-feature cache written by `amoe teachers cache`: when set, distillation reads its "
        "targets from it instead of running the teachers (amoe_core/train/teacher_cache.py says when it is valid).",
    )
    teacher_cache_dtype: Literal["bfloat16", "float16"] = Field(
        "bfloat16", description="Dtype of the cached teacher outputs (what `amoe teachers cache` writes)."
    )

    @field_validator("run")
    @classmethod
    def _folder_name(cls, run: str) -> str:
        if run in (".", ".."):  # a folder name under runs_dir, not runs_dir itself or its parent
            raise ValueError("must name a run folder, not . or ..")
        if run.startswith("."):  # hidden names are the locks and temporaries beside runs (`.lk.lock` is run lk's)
            raise ValueError("must not start with a dot")
        return run
