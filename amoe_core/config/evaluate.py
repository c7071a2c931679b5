"""The `evaluate` section: `amoe evaluate` (its datasets and protocols)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from amoe_core.config.section import Section


class EvalDataset(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Dataset name used in the report's tables.")
    train: str = Field(
        description="Train split: folder:PATH (one subfolder per class) or shards:PATH (labelled shards); "
        "voc:DIR for segmentation."
    )
    test: str = Field(description="Test split, same forms as train.")
    task: Literal["classification", "segmentation"] = Field(
        "classification",
        description="classification: kNN, linear probe, zero-shot on summaries; segmentation: the dense linear "
        "probe (VOC layout).",
    )
    max_pixels: int | None = Field(
        None,
        ge=16,
        description="With evaluate.preprocess = release: the largest image area (px) a resolution may reach; "
        "null = resolution squared (the release uses 256² for ImageNet, 768² for its other sets).",
    )


class ZeroShotConfig(Section):
    """Zero-shot classification through the text tower of a `siglip2` teacher whose path is a full Siglip2Model."""

    teacher: str = Field(
        description="A teachers[] name of kind siglip2: its summary and the student's summary for it are scored."
    )
    templates: list[str] = Field(
        default_factory=lambda: ["{}", "a photo of a {}."],
        min_length=1,
        description="Prompt templates, `{}` standing for the class name; their embeddings are averaged per class.",
    )

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
            EvalDataset(
                name="cutouts",
                train="voc:data/demo/segmentation",
                test="voc:data/demo/segmentation",
                task="segmentation",
            ),
        ],
        description="Labelled datasets every model is evaluated on (name, train, test).",
    )
    max_train_per_dataset: int = Field(
        5000,
        ge=10,
        description="Train images per dataset at most (a seeded uniform subsample); bounds kNN and probe cost.",
    )
    resolutions: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32, 64, 112],
        min_length=1,
        description="Image sides in pixels of the cross-resolution kNN (multiples of packing.patch_size).",
    )
    main_resolution: int = Field(
        64, ge=16, description="Side in pixels of the headline kNN, the linear probe and the PCA maps."
    )
    ks: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [10, 20, 100], min_length=1, description="Neighbour counts of the kNN accuracy."
    )
    temperature: float = Field(0.07, gt=0, description="Temperature of the kNN vote weights.")
    class_frequencies: Path | None = Field(
        None,
        description="A JSON object {class: images in the training pool} copied into eval.json, so the report can "
        "tell head from tail classes (demo_pool.long_tail writes data/demo/concept_frequencies.json); null = none.",
    )
    probe_lrs: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [0.1, 0.03, 0.01],
        min_length=1,
        description="Learning rates the linear probe tries; the best on the validation split is reported.",
    )
    probe_epochs: int = Field(30, ge=1, description="Linear-probe training epochs.")
    probe_val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Fraction of the train split held out to choose the probe's learning rate."
    )
    pca_images: int = Field(6, ge=1, description="Test images shown as PCA feature maps.")
    cache: Path = Field(
        Path("data/eval_cache"),
        description="Cache folder of the teachers' features on the evaluation sets (a cached run never loads the teachers).",
    )
    batch_size: int = Field(256, ge=1, description="Images per forward pass; lower it if memory runs out.")
    zero_shot: ZeroShotConfig | None = Field(
        default_factory=lambda: ZeroShotConfig(teacher="siglip", templates=["{}", "a picture of {}."]),
        description="Zero-shot classification settings; null = none. A teacher name no teacher has, or a checkpoint "
        "without a text tower, skips it with a warning (the default names the demo's siglip).",
    )
    seg_epochs: int = Field(
        20, ge=1, description="Segmentation probe: AdamW epochs over the train split (mini-batches of images)."
    )
    seg_lr: float = Field(1e-2, gt=0, description="Segmentation probe learning rate.")
    preprocess: Literal["square", "release"] = Field(
        "square",
        description="square: every image resized to resolution x resolution; release: the released SigLino "
        "processor's aspect-preserving, patch-aligned smart resize under datasets[].max_pixels "
        "(--model siglino: always uses it).",
    )
    bf16: bool = Field(
        False, description="bf16 autocast for feature extraction (the release evaluates in bf16); CUDA only."
    )
