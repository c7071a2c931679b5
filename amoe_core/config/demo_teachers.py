"""The `demo_teachers` section: `amoe teachers demo` (one `DemoTeacherConfig` per teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from amoe_core.config.section import Section


class DemoTeacherConfig(Section):
    """One demo teacher trained locally in the real transformers class, as a classifier on a labelled folder."""

    train: Path = Field(description="Labelled train folder, one subfolder per class.")
    test: Path = Field(description="The teacher's own domain's evaluation split (kNN accuracy in report.json).")
    hidden_size: int = Field(128, ge=16, description="Transformer width (must be divisible by heads).")
    layers: int = Field(4, ge=1, description="Transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads per block.")
    registers: int = Field(0, ge=0, description="DINOv3 register tokens (SigLIP2 has none: 0).")
    patch_size: int = Field(16, ge=2, description="Patch side in pixels.")
    image_size: int = Field(
        64,
        ge=16,
        description="Training resolution in pixels, also the kNN evaluation resolution (a multiple of patch_size).",
    )
    epochs: float = Field(2.0, gt=0, description="Training epochs over the train folder (fractions allowed).")
    batch_size: int = Field(128, ge=1, description="Images per optimiser step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine schedule after warm-up).")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    warmup_fraction: float = Field(
        0.05, ge=0, lt=1, description="Fraction of the steps spent warming the learning rate up."
    )
    augment: bool = Field(
        True, description="Random resized crop + flip; off: each image is only resized to the batch's grid."
    )
    min_crop_scale: float = Field(
        0.35, gt=0, le=1, description="Random-resized-crop area range is [min_crop_scale, 1] of the image."
    )
    grid_jitter: int = Field(
        1, ge=0, description="NaFlex-style: each batch's patch grid varies by +-grid_jitter rows/cols (0 = fixed grid)."
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the classification loss.")
    head: Literal["linear", "cosine"] = Field(
        "cosine", description="Classifier head; cosine: NormFace logits, features separated by angle (suits kNN)."
    )
    cosine_scale: float = Field(16.0, gt=0, description="Logit scale of the cosine head.")

    @model_validator(mode="after")
    def _shape(self) -> DemoTeacherConfig:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.grid_jitter >= self.image_size // self.patch_size:
            raise ValueError(f"grid_jitter ({self.grid_jitter}) must be smaller than the patch grid side")
        return self


class DemoTextConfig(Section):
    """The demo SigLIP2 teacher's text tower, trained LiT-style (Zhai et al. 2022): the image tower stays frozen as
    trained above, only the text tower and the sigmoid loss's scale and bias learn, on captions the Debian packages
    carry. Held-out test images are never captioned: zero-shot on them is a real measurement."""

    captions: list[Path] = Field(
        default_factory=lambda: [Path("data/demo/captions/tuxpaint.jsonl")],
        description="JSON-lines files of {image (relative to the file's folder's parent), caption, keywords}.",
    )
    titled_folders: list[Path] = Field(
        default_factory=lambda: [Path("data/demo/splits/clipart_train")],
        description="Labelled folders captioned `<class> <file-name words>` (Openclipart: category, then title).",
    )
    class_folders: list[Path] = Field(
        default_factory=lambda: [Path("data/demo/splits/fmnist_train")],
        description="Labelled folders captioned with their class name alone (fashion-mnist).",
    )
    class_folder_max: int = Field(
        1000, ge=1, description="At most this many images per class folder (class-stratified): a fixed caption."
    )
    vocab_size: int = Field(1024, ge=64, description="BPE vocabulary (tokenizers library) learnt from the captions.")
    width: int = Field(64, ge=8, description="Text transformer width (projected to the image tower's width).")
    heads: int = Field(2, ge=1, description="Text attention heads (must divide width).")
    layers: int = Field(1, ge=1, description="Text transformer blocks.")
    steps: int = Field(400, ge=1, description="Optimiser steps.")
    batch_size: int = Field(128, ge=2, description="Captioned images per step (every other pair is a negative).")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine schedule after 5% warm-up).")
    templates: list[str] = Field(
        default_factory=lambda: ["{}", "a picture of {}."],
        description="Prompt templates of report.json's zero-shot numbers (class names: folder names, `_` as space).",
    )


class DemoTeachersConfig(Section):
    """`amoe teachers demo`: a DINOv3 expert on fashion-mnist and a SigLIP2 expert on clip-art."""

    out: Path = Field(
        Path("data/teachers"), description="Output folder: one save_pretrained directory per teacher and report.json."
    )
    knn_k: int = Field(20, ge=1, description="Neighbours of the kNN accuracy check in report.json.")
    knn_temperature: float = Field(0.07, gt=0, description="Temperature of the kNN vote weights.")
    knn_train_max: int = Field(
        5000, ge=10, description="kNN memory bank: at most this many train images (class-stratified)."
    )
    threads: int = Field(
        1,
        ge=0,
        description="Torch threads during the stage (0 = torch's default); see train/demo_teachers/stage.py for why 1.",
    )
    # Recipes measured on the demo splits (kNN trained vs random, report.json): fashion-mnist is learnt best without
    # augmentation; clip-art (~2000 train images, 10 classes) needs many small-batch epochs and light crops.
    dinov3: DemoTeacherConfig = Field(
        DemoTeacherConfig(
            train=Path("data/demo/splits/fmnist_train"),
            test=Path("data/demo/splits/fmnist_test"),
            registers=4,
            batch_size=64,
            augment=False,
            grid_jitter=0,
        ),
        description="The DINOv3 demo teacher, an expert on fashion-mnist.",
    )
    siglip2: DemoTeacherConfig = Field(
        DemoTeacherConfig(
            train=Path("data/demo/splits/clipart_train"),
            test=Path("data/demo/splits/clipart_test"),
            epochs=16.0,
            batch_size=32,
            min_crop_scale=0.6,
        ),
        description="The SigLIP2 demo teacher, an expert on clip-art.",
    )

    text: DemoTextConfig = Field(
        DemoTextConfig(), description="The SigLIP2 teacher's text tower (zero-shot), trained on frozen image features."
    )
    segmentation: Path | None = Field(
        Path("data/demo/segmentation"),
        description="VOC-layout split (demo pool) whose linear-probe mIoU report.json gives per teacher; null = none.",
    )

    @model_validator(mode="after")
    def _siglip_registers(self) -> DemoTeachersConfig:
        if self.siglip2.registers:
            raise ValueError("siglip2.registers must be 0: Siglip2VisionModel has no register tokens")
        return self
