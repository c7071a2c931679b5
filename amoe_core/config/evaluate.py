"""The `evaluate` section: `amoe evaluate` (its datasets and protocols)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from amoe_core.config.section import Section


class EvalDataset(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train: str  # folder:PATH (one subfolder per class) or shards:PATH (labelled shards); voc:DIR for segmentation
    test: str
    # classification: kNN, linear probe, zero-shot on summaries; segmentation: the dense linear probe (VOC layout)
    task: Literal["classification", "segmentation"] = "classification"
    # evaluate.preprocess = release: the largest image area (px) a resolution may reach; None = resolution² (the
    # release uses 256² for ImageNet and 768² for its other sets at its 512 / 1024 px settings)
    max_pixels: int | None = Field(None, ge=16)


class ZeroShotConfig(Section):
    """Zero-shot classification through the text tower of a `siglip2` teacher whose path is a full Siglip2Model."""

    teacher: str  # a teachers[] name of kind siglip2: its summary and the student's summary for it are scored
    templates: list[str] = Field(default_factory=lambda: ["{}", "a photo of a {}."], min_length=1)  # "{}" = class

    @field_validator("templates")
    @classmethod
    def _placeholder(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"each template needs exactly one {{}} for the class name, got {bad}")
        return templates


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
    ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [10, 20, 100], min_length=1)
    temperature: float = Field(0.07, gt=0)
    probe_lrs: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.1, 0.03, 0.01], min_length=1)
    probe_epochs: int = Field(30, ge=1)
    probe_val_fraction: float = Field(0.1, gt=0, lt=1)
    pca_images: int = Field(6, ge=1)
    cache: Path = Path("data/eval_cache")
    batch_size: int = Field(256, ge=1)
    zero_shot: ZeroShotConfig | None = None  # None = no zero-shot
    seg_epochs: int = Field(20, ge=1)  # segmentation probe: AdamW epochs over the train split (mini-batches of images)
    seg_lr: float = Field(1e-2, gt=0)
    # square: every image resized to resolution x resolution; release: the released SigLino processor's
    # aspect-preserving, patch-aligned smart resize under datasets[].max_pixels (--model siglino: always uses it)
    preprocess: Literal["square", "release"] = "square"
    bf16: bool = False  # bf16 autocast for feature extraction (the release evaluates in bf16); CUDA only
