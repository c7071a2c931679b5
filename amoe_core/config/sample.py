"""The `sample` section: `amoe curate sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from amoe_core.config.section import Section


class SampleConfig(Section):
    """`amoe curate sample`: hierarchical balanced sampling, plus a random baseline of the same size."""

    shards: Path = Path("data/shards")
    clusters: Path = Path("data/curation/clusters")
    embeddings: Path = Path("data/curation/embeddings")
    target: int = Field(4000, ge=1)
    within: Literal["random", "closest"] = "random"  # how points are taken inside a level-1 cluster
    out: Path = Path("data/curation/selection")
    plots: Path = Path("data/curation/plots")
    plot_clusters: int = Field(6, ge=1)  # clusters shown in the example grid
    plot_images: int = Field(8, ge=1)  # images per cluster in the example grid
