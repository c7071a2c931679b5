"""Small real inputs for the training tests: tiny teachers saved with save_pretrained, a few shards of real images
(sklearn digits and skimage photos at several sizes), and params that train a tiny student in seconds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from PIL import Image

from amoe_core.config import Params, validate_params


def save_dinov3(path: Path, width: int = 32) -> None:
    """A random-weight DINOv3 (1 layer, 2 heads, 4 registers, patch 16) saved with save_pretrained."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          patch_size=16, num_register_tokens=4, image_size=64)  # fmt: skip
    DINOv3ViTModel(cfg).save_pretrained(path)


def save_siglip2(path: Path, width: int = 64, heads: int = 2, mlp: int = 64) -> None:
    """A random-weight SigLIP2 NaFlex (1 layer, patch 16, MAP head) saved with save_pretrained."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    cfg = Siglip2VisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=1, num_attention_heads=heads,
                              patch_size=16, num_patches=64)  # fmt: skip
    Siglip2VisionModel(cfg).save_pretrained(path)


def make_teachers(root: Path) -> list[dict]:
    """A DINOv3 (4 registers) and a SigLIP2 (NaFlex, MAP head) teacher with random weights, width 32/64."""
    torch.manual_seed(0)
    save_dinov3(root / "dinov3")
    save_siglip2(root / "siglip2")
    return [
        {"name": "dino", "kind": "dinov3", "path": str(root / "dinov3"), "register_weight": 1.0},
        {"name": "siglip", "kind": "siglip2", "path": str(root / "siglip2")},
    ]


def make_shards(root: Path, n: int = 72, per_shard: int = 30) -> Path:
    """`n` real images (digits and photo crops, 24..72 px, several aspect ratios) in WebDataset shards + manifest."""
    from skimage import data as skdata
    from sklearn.datasets import load_digits

    digits = load_digits()
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    rng = np.random.default_rng(0)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n):
            w, h = (int(v) for v in rng.integers(24, 73, size=2))
            if i % 2:
                img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).convert("RGB")
                label = str(digits.target[i])
            else:
                img, label = Image.fromarray(photos[(i // 2) % len(photos)]), None
            img = img.resize((w, h))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            meta = {"source": "digits" if label else "photos", "label": label, "width": w, "height": h}
            sink.write({"__key__": f"img{i:04d}", "png": buf.getvalue(), "json": json.dumps(meta).encode()})
            rows.append(
                {
                    "key": f"img{i:04d}",
                    "shard": f"shard-{i // per_shard:06d}.tar",
                    "source": meta["source"],
                    "label": label,
                    "width": w,
                    "height": h,
                    "format": "png",
                }
            )
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def tiny_params(root: Path, teachers: list[dict], shards: Path, **distill) -> Params:
    """Params for a tiny CPU run: a 2-layer student, 2 sequences of 48 tokens per step, a few tens of steps."""
    tree = {
        "seed": 0,
        "teachers": teachers,
        "packing": {
            "patch_size": 16,
            "c_max": 48,
            "max_images_per_seq": 8,
            "min_tokens": 4,
            "max_tokens": 16,
            "seqs_per_step": 2,
            "shuffle_buffer": 32,
            "workers": 0,
        },
        "student": {
            "name": "tiny",
            "overrides": {
                "depth": 2,
                "dim": 64,
                "heads": 2,
                "head_dim": 32,
                "num_experts": 4,
                "expert_hidden": 32,
                "top_k": 2,
            },
        },
        "loss": {"phis_samples": 16},
        "distill": {
            "run": "t",
            "runs_dir": str(root / "runs"),
            "shards": str(shards),
            "selection": None,
            "steps": 6,
            "warmup_steps": 2,
            "checkpoint_every": 3,
            "lr": 3e-3,
            **distill,
        },
        "launch": {"folder": str(root / "submitit"), "mem_gb": 1, "timeout_min": 10},
    }
    return validate_params(tree)
