"""The `packing` section: how `amoe distill` batches images (and how `amoe evaluate` lays out a student's
sequences)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from amoe_core.config.section import Section


class PackingConfig(Section):
    """Token-balanced batching: native-aspect images packed into sequences of exactly `c_max` tokens."""

    patch_size: int = Field(16, ge=1, description="Patch side in pixels (must equal the student's patch_size).")
    c_max: int = Field(
        256, ge=4, description="Patch tokens per sequence (prefix tokens are added per image by the student)."
    )
    max_images_per_seq: int = Field(16, ge=1, description="Images packed into one sequence at most.")
    min_tokens: int = Field(
        4, ge=1, description="Fewest patch tokens per image (its resolution range's low end; aspect ratio is kept)."
    )
    max_tokens: int = Field(64, ge=1, description="Most patch tokens per image (must fit in c_max).")
    token_sampling: Literal["native", "uniform", "loguniform"] = Field(
        "loguniform",
        description="Per-image token budget: the image's own size (native), or drawn over [min_tokens, max_tokens].",
    )
    seqs_per_step: int = Field(8, ge=1, description="Sequences per rank per optimiser step.")
    shuffle_buffer: int = Field(
        512,
        ge=1,
        description="Images in the packer's pool that each sequence is filled from (larger: fuller sequences, more reordering).",
    )
    shard_interleave: int = Field(
        16, ge=1, description="Shards whose samples are interleaved in the stream (mixes sources)."
    )
    mode: Literal["packed", "fixed"] = Field(
        "packed",
        description="packed: token-balanced sequences; fixed: a fixed number of images per step (ablation baseline).",
    )
    images_per_step: int | None = Field(
        None, ge=1, description="mode=fixed only: images per step; None = as many as packed mode fits on average."
    )
    workers: int = Field(
        1, ge=0, description="DataLoader worker processes feeding `amoe distill` (0 = load in the main process)."
    )

    @model_validator(mode="after")
    def _tokens(self) -> PackingConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.max_tokens > self.c_max:
            raise ValueError(f"max_tokens ({self.max_tokens}) must fit in one sequence (c_max = {self.c_max})")
        return self
