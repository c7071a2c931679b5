"""The `packing` section: how `amoe distill` batches images (and how `amoe evaluate` lays out a student's
sequences)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from amoe_core.config.section import Section


class PackingConfig(Section):
    """Token-balanced batching: native-aspect images packed into sequences of exactly `c_max` tokens."""

    patch_size: int = Field(16, ge=1)
    c_max: int = Field(256, ge=4)  # patch tokens per sequence (prefix tokens are added per image by the student)
    max_images_per_seq: int = Field(16, ge=1)
    min_tokens: int = Field(4, ge=1)  # per-image patch-count range; aspect ratio is kept
    max_tokens: int = Field(64, ge=1)
    token_sampling: Literal["native", "uniform", "loguniform"] = "loguniform"
    seqs_per_step: int = Field(8, ge=1)  # sequences per rank per step
    shuffle_buffer: int = Field(512, ge=1)
    shard_interleave: int = Field(16, ge=1)  # shards whose samples are interleaved in the stream (mixes sources)
    mode: Literal["packed", "fixed"] = "packed"  # fixed = a fixed number of images per step (ablation baseline)
    # mode=fixed only; None = as many images as packed mode fits on average (seqs_per_step * c_max / mean tokens)
    images_per_step: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _tokens(self) -> PackingConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.max_tokens > self.c_max:
            raise ValueError(f"max_tokens ({self.max_tokens}) must fit in one sequence (c_max = {self.c_max})")
        return self
