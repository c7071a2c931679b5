"""`amoe teachers demo`: train two small domain experts in the real transformers classes (no pretrained weights can
be downloaded on the project's machines); this module is the stage: train or reuse, report, save.

- a `DINOv3ViTModel` classifier (head on CLS) on fashion-mnist train,
- a `Siglip2VisionModel` classifier (head on the MAP-pooled `pooler_output`) on the clip-art train split.

Training (classifier.py) uses a cosine head and cheap batch-level augmentation by default. The backbone (not the classifier head) is saved with `save_pretrained` plus its image
processor config, atomically (tmp dir + rename); `report.json` gives each teacher's kNN accuracy (k=20, T=0.07,
cosine, weighted votes as in DINO, Caron et al. 2021) on its own domain's test split, trained vs the same
architecture with random weights, computed through `load_teacher` on the saved directory (the path distillation
uses), and the same two numbers on the OTHER teacher's domain: an expert is strong on its own domain only. The kNN is
evaluation's own (amoe_core.eval.knn), so this stage sits in train/, above both models/ and eval/.

Threads: `demo_teachers.threads` (default 1) applies while the stage runs. These models are tiny (16-token images,
width 128): with 2 threads on 2 cores that other processes also use, each step waits for the slower thread and a
batch-128 SigLIP2 step took 1.4 s vs 0.09 s for batch 32 on 1 thread.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import DINOv3ViTImageProcessor, Siglip2ImageProcessor

from amoe_core.config.demo_teachers import DemoTeacherConfig, DemoTeachersConfig
from amoe_core.config.teachers import TeacherSpec
from amoe_core.errors import AmoeError, require_path
from amoe_core.eval.knn import knn_accuracy
from amoe_core.eval.labels import LabelledFeatures
from amoe_core.io import atomic_dir, atomic_write_json
from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher
from amoe_core.models.teachers.hf import quiet_transformers
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.train.demo_teachers.classifier import build_backbone, train_classifier, wrap
from amoe_core.train.demo_teachers.folders import LabelledImages, folder_fingerprint, load_folder

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

KINDS = ("dinov3", "siglip2")
INFO_FILE = "amoe_demo.json"  # inside each saved teacher directory: the inputs it was trained from + its kNN


# ---------------------------------------------------------------------------------------------------------- kNN
def stratified_subset(labels: Tensor, max_n: int, seed: int) -> Tensor:
    """At most `max_n` indices with every class kept in proportion (deterministic)."""
    if len(labels) <= max_n:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, round(len(idx) * max_n / len(labels)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(keep).sort().values


@torch.no_grad()
def embed(teacher: Teacher, images: Tensor, batch: int = 512) -> Tensor:
    """Teacher summaries of uint8 images [N, 3, S, S] (already at the evaluation resolution)."""
    out = []
    for start in range(0, len(images), batch):
        chunk = [im.float() / 255 for im in images[start : start + batch]]
        out.append(teacher(chunk).summary)
    return torch.cat(out)


def knn_eval(
    teacher: Teacher, train: LabelledImages, test: LabelledImages, top: DemoTeachersConfig, seed: int
) -> float:
    bank = stratified_subset(train.labels, top.knn_train_max, seed)
    feats = embed(teacher, train.images[bank])
    data = LabelledFeatures(
        feats.numpy(), train.labels[bank].numpy(), embed(teacher, test.images).numpy(), test.labels.numpy()
    )
    accs = knn_accuracy(data, [top.knn_k], top.knn_temperature)
    return accs[top.knn_k]


# ---------------------------------------------------------------------------------------------------------- saving
def save_teacher(kind: str, backbone: nn.Module, cfg: DemoTeacherConfig, out: Path, info: dict[str, Any]) -> None:
    """save_pretrained into a temporary sibling directory, then swap it in: `out` is never half written."""
    with atomic_dir(out, "demo_teachers.out", legacy=(INFO_FILE,)) as tmp:
        with quiet_transformers():
            backbone.save_pretrained(tmp)
            if kind == "dinov3":
                size = {"height": cfg.image_size, "width": cfg.image_size}
                proc = DINOv3ViTImageProcessor(size=size, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
            else:
                side = cfg.image_size // cfg.patch_size
                proc = Siglip2ImageProcessor(patch_size=cfg.patch_size, max_num_patches=side * side)
            proc.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------- stage
def other_kind(kind: str) -> str:
    """The other demo teacher: its domain is where this one should be weak (the specialisation check)."""
    return KINDS[1 - KINDS.index(kind)]


def inputs_of(kind: str, top: DemoTeachersConfig, seed: int) -> dict[str, Any]:
    """Everything a saved teacher and its report entry depend on: when unchanged, the stage skips it."""
    cfg: DemoTeacherConfig = getattr(top, kind)
    other: DemoTeacherConfig = getattr(top, other_kind(kind))
    return {
        "seed": seed,
        "config": cfg.model_dump(mode="json"),
        "knn": {"k": top.knn_k, "temperature": top.knn_temperature, "train_max": top.knn_train_max},
        "data": {"train": folder_fingerprint(cfg.train), "test": folder_fingerprint(cfg.test)},
        "other_domain": {"train": folder_fingerprint(other.train), "test": folder_fingerprint(other.test)},
    }


def previous_result(out: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    f = out / INFO_FILE
    if not (f.is_file() and (out / "config.json").is_file()):
        return None
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None
    return info if info.get("inputs") == inputs else None


def train_demo_teacher(
    kind: str, top: DemoTeachersConfig, seed: int, force: bool = False, max_steps: int | None = None
) -> dict[str, Any]:
    """Train (or reuse) one demo teacher; return its report entry."""
    cfg: DemoTeacherConfig = getattr(top, kind)
    require_path(f"demo_teachers.{kind}.train", cfg.train, "labelled folder")
    require_path(f"demo_teachers.{kind}.test", cfg.test, "labelled folder")
    other_name = other_kind(kind)
    require_path(f"demo_teachers.{other_name}.train", getattr(top, other_name).train, "labelled folder")
    require_path(f"demo_teachers.{other_name}.test", getattr(top, other_name).test, "labelled folder")
    out = top.out / kind
    inputs = inputs_of(kind, top, seed)
    if max_steps is not None:
        inputs["max_steps"] = max_steps
    if not force and (prev := previous_result(out, inputs)) is not None:
        log.info("teacher %s: %s is up to date, skipping", kind, out)
        return prev["result"]
    train, test = load_folder(cfg.train, cfg.image_size), load_folder(cfg.test, cfg.image_size)
    if train.classes != test.classes:
        raise AmoeError(f"demo_teachers.{kind}: train classes {train.classes} differ from test classes {test.classes}")
    log.info(
        "teacher %s: %d train / %d test images, %d classes",
        kind,
        len(train.labels),
        len(test.labels),
        len(train.classes),
    )
    backbone, facts = train_classifier(kind, cfg, train, seed, max_steps)
    trained = wrap(kind, backbone, kind)
    torch.manual_seed(seed)
    random = wrap(kind, build_backbone(kind, cfg), kind)
    trained_acc, random_acc = (knn_eval(t, train, test, top, seed) for t in (trained, random))
    # The same two models on the other teacher's domain (at this teacher's resolution): an expert is weak there.
    other: DemoTeacherConfig = getattr(top, other_name)
    o_train, o_test = load_folder(other.train, cfg.image_size), load_folder(other.test, cfg.image_size)
    o_trained, o_random = (knn_eval(t, o_train, o_test, top, seed) for t in (trained, random))
    result = {
        "path": str(out),
        "model": type(backbone).__name__,
        "classes": len(train.classes),
        "train_images": len(train.labels),
        "test_images": len(test.labels),
        "resolution": cfg.image_size,
        **facts,
        "knn": {
            "trained": trained_acc,
            "random": random_acc,
            "k": top.knn_k,
            "temperature": top.knn_temperature,
            "split": str(cfg.test),
        },
        "knn_other_domain": {"trained": o_trained, "random": o_random, "split": str(other.test)},
    }
    save_teacher(kind, backbone, cfg, out, {"inputs": inputs, "result": result})
    check_reload(kind, out, trained, test.images[:8])
    log.info(
        "teacher %s: kNN %.3f trained vs %.3f random; on %s: %.3f vs %.3f",
        kind,
        trained_acc,
        random_acc,
        other.test,
        o_trained,
        o_random,
    )
    return result


def check_reload(kind: str, out: Path, trained: Teacher, images: Tensor) -> None:
    """The saved directory, loaded the way distillation loads it, must give the features just evaluated."""
    loaded = load_teacher(TeacherSpec(name=kind, kind=kind, path=str(out)))
    a, b = embed(trained, images), embed(loaded, images)
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"{out}: reloaded teacher differs from the trained one (max diff {(a - b).abs().max():.2e})")


def run(params: Params, force: bool = False, max_steps: int | None = None) -> dict[str, Any]:
    """Train both demo teachers (skipping any whose inputs are unchanged) and write `<out>/report.json`."""
    top = params.demo_teachers
    before = torch.get_num_threads()
    if top.threads:
        torch.set_num_threads(top.threads)
    try:
        report = {kind: train_demo_teacher(kind, top, params.seed, force, max_steps) for kind in KINDS}
    finally:
        torch.set_num_threads(before)
    atomic_write_json(top.out / "report.json", report)
    return report
