"""The `demo_pool` section: `amoe data demo-pool`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class DemoPoolConfig(Section):
    """`amoe data demo-pool`: real images from Debian packages, no internet."""

    out: Path = Path("data/demo")
    debs: Path = Path("data/debs")  # downloaded .deb files are cached here
    fmnist_pool: int = Field(12000, ge=0, le=60000)  # fashion-mnist train images in the unlabelled pool
    fmnist_teacher_train: int = Field(12000, ge=100, le=60000)  # labelled fashion-mnist train split for teachers
    fmnist_test: int = Field(2000, ge=20, le=10000)  # labelled evaluation split
    # Labelled clip-art splits, balanced (chance = 1/n_classes): categories with >= min pictures, not excluded,
    # each with test_per_category held out and at most train_per_category for train.
    clipart_min_per_category: int = Field(120, ge=2)
    clipart_test_per_category: int = Field(40, ge=1)  # lowered to half the smallest kept category if needed
    clipart_train_per_category: int = Field(250, ge=1)
    clipart_exclude: list[str] = Field(default_factory=lambda: ["unsorted"])  # grab-bag categories: no visual class
    max_per_category: int = Field(0, ge=0)  # clip-art / stamps taken per category (0 = all; small pools for tests)
