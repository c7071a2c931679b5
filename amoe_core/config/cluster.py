"""The `cluster` section: `amoe curate cluster`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from amoe_core.config.section import Section


class ClusterConfig(Section):
    """`amoe curate cluster`: hierarchical k-means with resampling (Vo et al. 2024), one value per level for the
    lists; the resampling keys mean what they mean in the reference config of ssl-data-curation (see hkmeans.py)."""

    embeddings: Path = Field(
        Path("data/curation/embeddings"), description="Embeddings folder written by `amoe curate embed`."
    )
    k: list[int] = Field(
        default_factory=lambda: [300, 60, 20],
        min_length=1,
        description="Clusters per level, finest first (must not increase); the list's length is the number of levels.",
    )
    iters: int = Field(
        50, ge=1, description="Lloyd iterations of each k-means run (the reference's 50; stops once nothing moves)."
    )
    resampling_steps: list[int] = Field(
        default_factory=lambda: [6, 6, 6],
        description="Per level: k-means runs, the first on all items being step 0; each further one runs on "
        "sample_size items per cluster and reassigns every item; 1 = no resampling.",
    )
    sample_size: list[int] = Field(
        default_factory=lambda: [25, 3, 2],
        description="Per level: items a resampling step takes per cluster (about half the mean cluster size); <= 1 = no resampling.",
    )
    sampling_strategy: Literal["closest", "random"] = Field(
        "closest", description="Which items of a cluster a resampling step takes: closest to the centroid, or random."
    )
    metric: Literal["cosine", "l2"] = Field(
        "l2",
        description="Distance between embeddings and centroids: l2 as the reference; cosine (on unit-normalised "
        "embeddings) when the encoder's feature norms carry no meaning.",
    )
    init: Literal["kmeans++", "random"] = Field(
        "kmeans++",
        description="Centroid seeding; greedy kmeans++ (2 + ln k candidates per centre, as the reference) reaches "
        "small, far clusters that random misses.",
    )
    chunk_size: int = Field(
        65536,
        ge=1,
        description="Points assigned per faiss search; lower it if the float32 working copy does not fit in memory.",
    )
    max_points_per_centroid: int | None = Field(
        None,
        ge=1,
        description="Step 0 of level 1 trains on at most k * this many random points (less memory); "
        "null = all points, as the reference.",
    )
    processes: int = Field(
        1, ge=1, description="Processes of `amoe curate cluster` on this machine (torchrun when > 1)."
    )
    out: Path = Field(
        Path("data/curation/clusters"), description="Output folder of the cluster assignments and centroids."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        renamed = {"resample_steps": "resampling_steps (= old value + 1: the first k-means is step 0)",
                   "resample_points": "sample_size", "resample_method": "sampling_strategy"}  # fmt: skip
        for old in set(renamed) & set(data if isinstance(data, dict) else ()):
            raise ValueError(f"{old} was renamed to {renamed[old]}, as in Vo et al.'s reference config")
        return data

    @model_validator(mode="after")
    def _per_level(self) -> ClusterConfig:
        for name in ("resampling_steps", "sample_size"):
            if len(getattr(self, name)) != len(self.k):
                raise ValueError(
                    f"{name} needs one value per level ({len(self.k)} levels in k), got {getattr(self, name)}"
                )
        if any(b > a for a, b in zip(self.k, self.k[1:])):
            raise ValueError(f"k must not increase from one level to the next, got {self.k}")
        if min(self.k) < 1 or min(self.sample_size) < 1 or min(self.resampling_steps) < 1:
            raise ValueError("k, resampling_steps and sample_size must be >= 1 at every level")
        return self
