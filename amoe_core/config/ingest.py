"""The `ingest` section: `amoe data ingest`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from amoe_core.config.section import Byte, Section


class IngestConfig(Section):
    """`amoe data ingest`: image sources -> validated, deduplicated WebDataset shards + manifest.parquet."""

    sources: list[str] = Field(
        default_factory=lambda: ["folder:data/demo/pool"],
        min_length=1,
        description="Image sources: folder:PATH (searched recursively) or shards:PATH (an existing shard set).",
    )
    out: Path = Field(Path("data/shards"), description="Output folder of the shards and manifest.parquet.")
    shard_size: int = Field(2000, ge=1, description="Images per WebDataset shard.")
    max_side: int = Field(512, ge=16, description="Larger images are downscaled to this side in pixels before storage.")
    min_side: int = Field(16, ge=1, description="Images with a smaller side in pixels are skipped.")
    max_pixels: int = Field(
        64_000_000, ge=1, description="Decompression-bomb guard (8k x 8k): files with more pixels are skipped."
    )
    max_bytes: int = Field(
        256 * 2**20, ge=1, description="Files are read whole into memory: larger ones (bytes) are skipped unread."
    )
    phash_distance: int = Field(
        4,
        ge=0,
        le=64,
        description="Near-duplicate threshold: Hamming distance between 64-bit pHashes; 0 = exact duplicates only.",
    )
    phash_min_side: int = Field(
        32, ge=1, description="Smaller images are only exact-deduplicated (why: amoe_core/data/dedup.py)."
    )
    background: tuple[Byte, Byte, Byte] = Field(
        (255, 255, 255), description="RGB colour that transparent pixels are composited onto."
    )
    jpeg_quality: int = Field(92, ge=50, le=100, description="JPEG quality of the images re-encoded as jpg.")
    store_format: Literal["auto", "jpg", "png"] = Field(
        "auto", description="Stored image format; auto: jpg for JPEG inputs, png for lossless ones."
    )
    on_extension_mismatch: Literal["skip", "decode"] = Field(
        "skip", description="What to do with a file whose bytes do not match its extension (e.g. PNG bytes in a .jpg)."
    )
    workers: int = Field(0, ge=0, description="Parallel decoding workers; 0 = all cores.")
    chunk_size: int = Field(256, ge=1, description="Files per staged work unit (the resume granularity).")
    keep_staging: bool = Field(
        False, description="Keep the decoded chunks after success (a faster rebuild of deleted shards)."
    )

    @model_validator(mode="after")
    def _sides(self) -> IngestConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")
        return self
