"""The `demo_pool` section: `amoe data demo-pool`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class DemoPoolConfig(Section):
    """`amoe data demo-pool`: real images from Debian packages, no internet."""

    out: Path = Field(Path("data/demo"), description="Output folder: the unlabelled pool and the labelled splits.")
    debs: Path = Field(Path("data/debs"), description="Cache folder of the downloaded .deb files.")
    fmnist_pool: int = Field(
        12000, ge=0, le=60000, description="Fashion-mnist train images put in the unlabelled pool."
    )
    fmnist_teacher_train: int = Field(
        12000, ge=100, le=60000, description="Labelled fashion-mnist train images for the demo teachers."
    )
    fmnist_test: int = Field(2000, ge=20, le=10000, description="Labelled fashion-mnist evaluation images.")
    clipart_min_per_category: int = Field(
        120,
        ge=2,
        description="Clip-art categories with fewer pictures are left out of the balanced labelled splits (chance = 1/n_classes).",
    )
    clipart_test_per_category: int = Field(
        40,
        ge=1,
        description="Clip-art test images held out per category (lowered to half the smallest kept category if needed).",
    )
    clipart_train_per_category: int = Field(
        250, ge=1, description="At most this many clip-art train images per category."
    )
    clipart_exclude: list[str] = Field(
        default_factory=lambda: ["unsorted"],
        description="Clip-art categories never used as classes (grab-bags with no visual class).",
    )
    max_per_category: int = Field(
        0, ge=0, description="Clip-art / stamps taken per category (0 = all; small pools for tests)."
    )
    # demo_pool.long_tail (amoe_core/data/demo_longtail.py): the pool redrawn with a web-like long tail
    long_tail: bool = Field(
        False,
        description="Redraw the unlabelled pool with Zipf concept frequencies and near-duplicates of the head "
        "(the data ablation's long-tail pool, `amoe ablate` variant data-longtail); the labelled splits stay as they are.",
    )
    long_tail_exponent: float = Field(
        1.0,
        gt=0,
        description="Zipf exponent a: the concept of rank r holds long_tail_head * r^-a images. 1.0 is Zipf's law; "
        "neither the paper nor Vo et al. 2024 state one (they describe web concepts as long-tailed).",
    )
    long_tail_head: int = Field(2000, ge=1, description="Images of the most frequent concept (rank 1).")
    long_tail_near_duplicates: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Share of the head concept's images that are near-duplicates (flips, crops, JPEG re-encodes); "
        "a concept of n images has this share times n / long_tail_head.",
    )
    segmentation_train: int = Field(
        160, ge=0, description="Demo segmentation split (data/demo_segmentation.py): training composites; 0 = no split."
    )
    segmentation_val: int = Field(64, ge=1, description="Demo segmentation split: validation composites.")
    segmentation_side: int = Field(128, ge=32, description="Demo segmentation composites' side in pixels.")
