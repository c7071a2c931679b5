"""Zero-shot classification through a SigLIP2 text tower (the released SigLino table's zero-shot column).

Each class is the mean of its prompts' unit text embeddings (one prompt per template, after SigLIP's text
canonicalisation), renormalised; an image is assigned the class whose embedding has the largest cosine with its
summary. The sigmoid scale and bias of SigLIP's logits are one positive affine map, so the arg-max is the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
from pathlib import Path

import numpy as np
import torch

from amoe_core.errors import AmoeError
from amoe_core.eval.knn import l2_normalise
from amoe_core.eval.text_tower import Siglip2TextTower
from amoe_core.io import atomic_path

log = logging.getLogger(__name__)

CLASSNAMES_FILE = "classnames.txt"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """SigLIP's text canonicalisation (big_vision): punctuation removed, lower case, whitespace collapsed. Without it
    RADIO measured ~12 points of ImageNet zero-shot lost (its PR #142)."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return re.sub(r"\s+", " ", text).strip()


def class_names(spec: str, classes: list[str]) -> list[str]:
    """Readable class names: a `classnames.txt` beside the dataset's class folders (one name per line, in the sorted
    order of the folders), else the folder names with `_` as spaces."""
    root = Path(spec.partition(":")[2])
    f = (root if root.is_dir() else root.parent) / CLASSNAMES_FILE
    if f.is_file():
        names = [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) != len(classes):
            raise AmoeError(
                f"{f}: {len(names)} names for {len(classes)} classes {classes[:5]}...; give one line per class "
                "folder, in their sorted order"
            )
        return names
    return [c.replace("_", " ") for c in classes]


def prompts(names: list[str], templates: list[str]) -> list[str]:
    """Canonicalised prompts, class-major: names[0] x templates, names[1] x templates, ..."""
    return [canonicalize(t.format(n)) for n in names for t in templates]


def class_embeddings(tower: Siglip2TextTower, names: list[str], templates: list[str], cache: Path) -> np.ndarray:
    """[C, D] unit vectors: per class, the mean of its prompts' unit embeddings, renormalised. Cached per (text
    model, prompts): a cached run never loads the text tower twice."""
    texts = prompts(names, templates)
    key = hashlib.sha256(json.dumps([tower.fingerprint, texts]).encode()).hexdigest()[:16]
    path = cache / "zero_shot" / f"{tower.name}-{key}.npy"
    if path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 2 and len(arr) == len(names):
                return arr
        except (OSError, ValueError):
            pass
        log.warning("ignoring unreadable prompt-embedding cache %s", path)
    emb = tower.encode(texts).reshape(len(names), len(templates), -1).mean(1)
    arr = torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float32)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)
    return arr


def predict(image_feats: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
    """Class index per image: arg-max cosine between the image summary and each class embedding."""
    return (l2_normalise(image_feats.astype(np.float32)) @ class_emb.T).argmax(1)


def zero_shot_accuracy(image_feats: np.ndarray, labels: np.ndarray, class_emb: np.ndarray) -> float:
    return float((predict(image_feats, class_emb) == labels).mean())
