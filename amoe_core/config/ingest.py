"""The `ingest` section: `amoe data ingest`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from amoe_core.config.section import Byte, Section


class IngestConfig(Section):
    """`amoe data ingest`: image sources -> validated, deduplicated WebDataset shards + manifest.parquet."""

    sources: list[str] = Field(default_factory=lambda: ["folder:data/demo/pool"], min_length=1)
    out: Path = Path("data/shards")
    shard_size: int = Field(2000, ge=1)
    max_side: int = Field(512, ge=16)  # larger images are downscaled before storage
    min_side: int = Field(16, ge=1)  # smaller images are skipped
    max_pixels: int = Field(64_000_000, ge=1)  # decompression-bomb guard (8k x 8k); larger files are skipped
    max_bytes: int = Field(256 * 2**20, ge=1)  # files are read whole into memory: larger ones are skipped unread
    phash_distance: int = Field(4, ge=0, le=64)  # near-duplicate threshold (Hamming, 64-bit pHash); 0 = exact only
    phash_min_side: int = Field(32, ge=1)  # smaller images are only exact-deduplicated (why: amoe_core/data/dedup.py)
    background: tuple[Byte, Byte, Byte] = (255, 255, 255)  # alpha is composited onto this colour
    jpeg_quality: int = Field(92, ge=50, le=100)
    store_format: Literal["auto", "jpg", "png"] = "auto"  # auto: jpg for JPEG inputs, png for lossless ones
    on_extension_mismatch: Literal["skip", "decode"] = "skip"  # e.g. PNG bytes in a .jpg file
    workers: int = Field(0, ge=0)  # 0 = all cores
    chunk_size: int = Field(256, ge=1)  # files per staged work unit (the resume granularity)
    keep_staging: bool = False  # keep the decoded chunks after success (faster rebuild of deleted shards)

    @model_validator(mode="after")
    def _sides(self) -> IngestConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")
        return self
