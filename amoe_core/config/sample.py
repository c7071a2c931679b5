"""The `sample` section: `amoe curate sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from amoe_core.config.section import Section


class SampleConfig(Section):
    """`amoe curate sample`: hierarchical balanced sampling, plus a random baseline of the same size."""

    shards: Path = Field(Path("data/shards"), description="Shard set the selection draws from (its manifest).")
    clusters: Path = Field(
        Path("data/curation/clusters"), description="Cluster assignments written by `amoe curate cluster`."
    )
    embeddings: Path = Field(Path("data/curation/embeddings"), description="Embeddings written by `amoe curate embed`.")
    target: int = Field(4000, ge=1, description="Images in each selection (balanced and random).")
    within: Literal["random", "closest"] = Field(
        "random", description="How points are taken inside a level-1 cluster: at random or nearest its centroid."
    )
    out: Path = Field(
        Path("data/curation/selection"), description="Output folder of balanced.parquet and random.parquet."
    )
    plots: Path = Field(Path("data/curation/plots"), description="Output folder of the curation plots.")
    plot_clusters: int = Field(6, ge=1, description="Clusters shown in the example grid.")
    plot_images: int = Field(8, ge=1, description="Images per cluster in the example grid.")
