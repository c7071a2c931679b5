"""The `embed` section: `amoe curate embed`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class EmbedConfig(Section):
    """`amoe curate embed`: every image of the shard set -> float16 memmap aligned with the manifest."""

    shards: Path = Field(Path("data/shards"), description="Shard set to embed (written by `amoe data ingest`).")
    # The demo embeds with the SigLIP2 teacher: the demo DINOv3 is a narrow fashion-mnist expert whose space spends
    # most clusters on fashion-mnist (balanced share 0.74 vs random 0.67); SigLIP2's spreads the pool (0.43 vs 0.67).
    # With real teachers use DINOv3, as the paper does.
    encoder: str = Field(
        "siglip",
        description="Encoder of the curation space: a teacher name from `teachers`, or hf:PATH / timm:PATH for any local model.",
    )
    image_size: int = Field(64, ge=16, description="Side in pixels each image is resized to before embedding.")
    batch_size: int = Field(256, ge=1, description="Images per forward pass; lower it if memory runs out.")
    processes: int = Field(1, ge=1, description="Processes of `amoe curate embed` on this machine (torchrun when > 1).")
    out: Path = Field(Path("data/curation/embeddings"), description="Output folder of the float16 embeddings memmap.")
