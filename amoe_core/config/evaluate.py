"""The `evaluate` section: `amoe evaluate` (its datasets and protocols)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from amoe_core.config.section import Section


class EvalDataset(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train: str  # folder:PATH (one subfolder per class) or shards:PATH (labelled shards)
    test: str


class EvaluateConfig(Section):
    """`amoe evaluate`: kNN, linear probe, cross-resolution, fidelity, PCA maps."""

    datasets: list[EvalDataset] = Field(
        default_factory=lambda: [
            EvalDataset(
                name="fmnist", train="folder:data/demo/splits/fmnist_train", test="folder:data/demo/splits/fmnist_test"
            ),
            EvalDataset(
                name="clipart",
                train="folder:data/demo/splits/clipart_train",
                test="folder:data/demo/splits/clipart_test",
            ),
        ]
    )
    max_train_per_dataset: int = Field(5000, ge=10)
    resolutions: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [32, 64, 112], min_length=1)
    main_resolution: int = Field(64, ge=16)
    ks: list[int] = Field(default_factory=lambda: [10, 20, 100], min_length=1)
    temperature: float = Field(0.07, gt=0)
    probe_lrs: list[float] = Field(default_factory=lambda: [0.1, 0.03, 0.01])
    probe_epochs: int = Field(30, ge=1)
    probe_val_fraction: float = Field(0.1, gt=0, lt=1)
    pca_images: int = Field(6, ge=1)
    cache: Path = Path("data/eval_cache")
    batch_size: int = Field(256, ge=1)
