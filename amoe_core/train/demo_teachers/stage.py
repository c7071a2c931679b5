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

The SigLIP2 teacher then gains a text tower trained LiT-style against its frozen image tower (text_tower.py; the
image weights, and so every embedding downstream, are unchanged) and is saved as a full `Siglip2Model` with its
tokenizer, the layout of the released SigLIP2 checkpoints: `evaluate.zero_shot` reads it, distillation still loads
its vision tower. report.json adds, trained vs the same architecture with random weights vs chance: zero-shot top-1
on both domains' held-out test splits (SigLIP2) and each teacher's linear-probe segmentation mIoU on the demo
segmentation split (chance: predicting the most common class everywhere).

Threads: `demo_teachers.threads` (default 1) applies while the stage runs. These models are tiny (16-token images,
width 128): with 2 threads on 2 cores that other processes also use, each step waits for the slower thread and a
batch-128 SigLIP2 step took 1.4 s vs 0.09 s for batch 32 on 1 thread.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import DINOv3ViTImageProcessor, Siglip2ImageProcessor

from amoe_core.config.demo_teachers import DemoTeacherConfig, DemoTeachersConfig, DemoTextConfig
from amoe_core.config.teachers import TeacherSpec
from amoe_core.errors import AmoeError, require_path
from amoe_core.eval.knn import knn_accuracy
from amoe_core.eval.labels import LabelledFeatures
from amoe_core.eval.segmentation import (
    IGNORE,
    confusion,
    extract_patches,
    load_voc_pair,
    n_classes_of,
    scores,
    segmentation_probe,
)
from amoe_core.eval.text_tower import Siglip2TextTower
from amoe_core.eval.zero_shot import class_names, prompts, zero_shot_accuracy
from amoe_core.io import atomic_dir, atomic_write_json
from amoe_core.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher
from amoe_core.models.teachers.hf import quiet_transformers
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.train.demo_teachers.classifier import build_backbone, train_classifier, wrap
from amoe_core.train.demo_teachers.folders import LabelledImages, folder_fingerprint, load_folder, load_square
from amoe_core.train.demo_teachers.text_tower import (
    TextSide,
    caption_pairs,
    full_model,
    temporary_tokenizer,
    train_text_tower,
)

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

KINDS = ("dinov3", "siglip2")
SEG_EPOCHS, SEG_LR = 20, 1e-2  # evaluate.seg_epochs / seg_lr's defaults: the report's mIoU is evaluate's probe
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
def save_teacher(
    kind: str, backbone: nn.Module, cfg: DemoTeacherConfig, out: Path, info: dict[str, Any], tokenizer: Any = None
) -> None:
    """save_pretrained into a temporary sibling directory, then swap it in: `out` is never half written. `backbone`
    is a vision model, or (SigLIP2 with its text tower) a full `Siglip2Model` saved with its `tokenizer`."""
    with atomic_dir(out, "demo_teachers.out", legacy=(INFO_FILE,)) as tmp:
        with quiet_transformers():
            backbone.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
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
        "segmentation": top.segmentation and folder_fingerprint(top.segmentation),
        **({"text": text_inputs(top.text)} if kind == "siglip2" else {}),
    }


def text_inputs(text: DemoTextConfig) -> dict[str, Any]:
    return {
        "config": text.model_dump(mode="json"),
        "data": [folder_fingerprint(f.parent) if f.is_file() else None for f in text.captions]
        + [folder_fingerprint(d) for d in (*text.titled_folders, *text.class_folders)],
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
    if top.segmentation is not None:
        seg = result["segmentation"] = segmentation_eval(trained, random, top.segmentation, cfg.image_size, seed)
        log.info(
            "teacher %s: segmentation mIoU %.3f trained vs %.3f random (majority class: %.3f) on %s",
            kind, seg["trained"], seg["random"], seg["chance"], top.segmentation,
        )  # fmt: skip
    saved, tokenizer = backbone, None
    if kind == "siglip2":
        saved, tokenizer, result["text_tower"], result["zero_shot"] = text_tower_stage(
            top, backbone, trained, random, {"own": test, "other": o_test}, seed, max_steps
        )
        result["model"] = type(saved).__name__
    save_teacher(kind, saved, cfg, out, {"inputs": inputs, "result": result}, tokenizer)
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


def text_tower_stage(
    top: DemoTeachersConfig, backbone: nn.Module, trained: Teacher, random: Teacher,
    tests: dict[str, LabelledImages], seed: int, max_steps: int | None,
) -> tuple[nn.Module, Any, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """LiT on the frozen image tower, then zero-shot on both domains' held-out test splits, trained vs the same
    architecture with random weights (both towers) vs chance; returns the full model to save and its tokenizer."""
    text_cfg, size = top.text, top.siglip2.image_size
    pairs = caption_pairs(text_cfg, seed)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        images = torch.stack(list(pool.map(lambda pc: load_square(pc[0], size), pairs)))
    captions = [c for _, c in pairs]
    tokenizer = temporary_tokenizer([c for cs in captions for c in cs], text_cfg.vocab_size)
    feats = embed(trained, images)
    text, text_random, facts = train_text_tower(text_cfg, feats, captions, tokenizer, backbone.config, seed, max_steps)
    zs: dict[str, Any] = {"templates": text_cfg.templates}
    for domain, te in tests.items():
        split = top.siglip2.test if domain == "own" else top.dinov3.test
        names = class_names(f"folder:{split}", te.classes)
        zs[domain] = {
            "trained": zero_shot_eval(trained, text, tokenizer, names, text_cfg.templates, te),
            "random": zero_shot_eval(random, text_random, tokenizer, names, text_cfg.templates, te),
            "chance": 1 / len(te.classes),
            "split": str(split),
        }
    log.info(
        "teacher siglip2 text tower: zero-shot %.3f trained vs %.3f random (chance %.3f); on %s: %.3f vs %.3f",
        zs["own"]["trained"], zs["own"]["random"], zs["own"]["chance"], zs["other"]["split"], zs["other"]["trained"],
        zs["other"]["random"],
    )  # fmt: skip
    return full_model(backbone, text), tokenizer, facts, zs


@torch.no_grad()
def zero_shot_eval(
    teacher: Teacher, text: TextSide, tokenizer: Any, names: list[str], templates: list[str], test: LabelledImages
) -> float:
    """Top-1 of the class whose averaged prompt embedding is closest to each test summary (eval/zero_shot.py's)."""
    tower = Siglip2TextTower("demo", text.text_model, tokenizer, "")
    emb = tower.encode(prompts(names, templates)).reshape(len(names), len(templates), -1).mean(1)
    class_emb = torch.nn.functional.normalize(emb, dim=-1).numpy()
    return zero_shot_accuracy(embed(teacher, test.images).numpy(), test.labels.numpy(), class_emb)


def segmentation_eval(trained: Teacher, random: Teacher, root: Path, size: int, seed: int) -> dict[str, Any]:
    """Linear-probe mIoU (eval/segmentation.py) on the demo segmentation split's patch features at the teacher's
    resolution, trained vs random weights; chance: the mIoU of predicting every pixel as the most common class."""
    require_path("demo_teachers.segmentation", root, "VOC-layout folder (amoe data demo-pool)")
    train, test = load_voc_pair(f"voc:{root}", f"voc:{root}")
    masks = {"train": [train.mask(i) for i in range(len(train))], "test": [test.mask(i) for i in range(len(test))]}
    n_classes = n_classes_of(masks["train"])
    out: dict[str, Any] = {"split": str(root), "resolution": size}
    for label, teacher in (("trained", trained), ("random", random)):

        def grids(images: Tensor, t: Teacher = teacher) -> dict[str, Tensor]:
            p = t(list(images)).patches
            g = int(round((p.shape[0] / len(images)) ** 0.5))
            return {"t": p.reshape(len(images), g, g, -1)}

        ftr = extract_patches(grids, train, size, 64)["t"]
        fte = extract_patches(grids, test, size, 64)["t"]
        m = segmentation_probe(ftr, masks["train"], fte, masks["test"], n_classes, SEG_EPOCHS, SEG_LR, seed, "cpu")
        out[label] = m["miou"]
        out[f"{label}_pixel_acc"] = m["pixel_acc"]
    out["chance"] = majority_miou(masks["train"], masks["test"], n_classes)
    return out


def majority_miou(train: list[Tensor], test: list[Tensor], n_classes: int) -> float:
    """mIoU of the constant prediction 'the most common training class' (what a featureless probe can reach)."""
    counts = sum(torch.bincount(m[m != IGNORE].flatten(), minlength=n_classes) for m in train)
    top = int(torch.as_tensor(counts).argmax())
    conf = sum(confusion(torch.full_like(m, top), m, n_classes) for m in test)
    return scores(torch.as_tensor(conf))["miou"]


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
