"""Labelled evaluation datasets, named by a spec string:

- `folder:PATH`  one subfolder per class holding image files (searched recursively inside each class folder);
- `shards:PATH`  a WebDataset shard set written by `amoe data ingest` whose samples carry a `label` in their json
                 metadata (unlabelled samples are skipped).

Images are decoded lazily (shard samples are kept as their compressed bytes) and served as square [3, r, r] float
tensors in [0, 1] at whatever resolution the evaluation asks for; transparency is composited onto white.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from amoe_core.data.decode import to_rgb
from amoe_core.data.labelled_folders import list_labelled_folder
from amoe_core.data.shards import read_shard
from amoe_core.errors import AmoeError


@dataclass
class LabelledSet:
    """Images with integer labels indexing `classes`. `sources[i]` is a file path (folder) or a shard key."""

    spec: str
    classes: list[str]
    labels: np.ndarray  # int64 [n]
    sources: list[str]
    _blobs: list[bytes] | None = None  # encoded image bytes for shard datasets; None = read `sources` as files

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabelledSet:
        idx = np.asarray(idx, dtype=np.int64)
        blobs = None if self._blobs is None else [self._blobs[i] for i in idx]
        return LabelledSet(self.spec, self.classes, self.labels[idx], [self.sources[i] for i in idx], blobs)

    def fingerprint(self) -> str:
        """Identifies exactly which images (and labels) this set holds: part of feature-cache keys."""
        h = hashlib.sha256(self.spec.encode())
        for s, y in zip(self.sources, self.labels.tolist()):
            h.update(f"\0{s}\0{y}".encode())
        return h.hexdigest()[:16]

    def pil(self, i: int) -> Image.Image:
        try:
            im = Image.open(io.BytesIO(self._blobs[i]) if self._blobs is not None else self.sources[i])
            im.load()
        except (OSError, ValueError) as e:
            raise AmoeError(f"{self.spec}: cannot decode image {self.sources[i]} ({e}); remove or replace it") from None
        return _to_rgb(im)

    def image(self, i: int, resolution: int) -> torch.Tensor:
        """Image i as [3, r, r] float in [0, 1] (bicubic, antialiased by PIL when shrinking)."""
        im = self.pil(i).resize((resolution, resolution), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)

    def batches(self, resolution: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive [B, 3, r, r] batches in dataset order."""
        for start in range(0, len(self), batch_size):
            yield torch.stack([self.image(i, resolution) for i in range(start, min(start + batch_size, len(self)))])


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB with transparency composited onto white (clip-art and stamps are mostly transparent)."""
    return to_rgb(im, (255, 255, 255))


def _class_ids(names: list[str], classes: list[str] | None, spec: str) -> tuple[list[str], np.ndarray]:
    if classes is None:
        classes = sorted(set(names))
        if len(classes) < 2:
            raise AmoeError(
                f"{spec}: only one class ({classes[0]!r}); a labelled dataset needs at least two classes "
                "(one subfolder per class for folder:, a json 'label' per sample for shards:)"
            )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise AmoeError(f"{spec}: classes {unknown[:5]} do not occur in the training split {classes[:10]}")
    return classes, np.array([index[n] for n in names], dtype=np.int64)


def _load_folder(path: Path, spec: str, classes: list[str] | None) -> LabelledSet:
    files, names = list_labelled_folder(path, spec)
    classes, labels = _class_ids(names, classes, spec)
    return LabelledSet(spec, classes, labels, [str(f) for f in files])


def _load_shards(path: Path, spec: str, classes: list[str] | None) -> LabelledSet:
    # every tar of the folder, manifest or not: labelled shards from any WebDataset writer are welcome
    tars = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not tars:
        raise AmoeError(f"{spec}: no shard .tar files at {path}; run `amoe data ingest` or fix the path")
    keys, names, blobs = [], [], []
    for sample in (s for tar in tars for s in read_shard(tar)):
        meta = json.loads(sample.meta or b"{}")
        if meta.get("label") is None or sample.image is None:
            continue
        keys.append(sample.key)
        names.append(str(meta["label"]))
        blobs.append(sample.image)
    if not keys:
        raise AmoeError(f"{spec}: no labelled images in the shards at {path} (samples need a json 'label')")
    classes, labels = _class_ids(names, classes, spec)
    return LabelledSet(spec, classes, labels, keys, blobs)


def load_labelled(spec: str, classes: list[str] | None = None) -> LabelledSet:
    """Open a `folder:PATH` or `shards:PATH` dataset. Pass the training split's `classes` when opening its test split
    so both use the same label ids."""
    kind, sep, raw = spec.partition(":")
    if not sep or kind not in ("folder", "shards") or not raw:
        raise AmoeError(f"dataset {spec!r}: expected folder:PATH (one subfolder per class) or shards:PATH")
    path = Path(raw)
    if not path.exists():
        raise AmoeError(f"dataset {spec!r}: {path} does not exist; run the stage that produces it or fix the path")
    return _load_folder(path, spec, classes) if kind == "folder" else _load_shards(path, spec, classes)


def load_pair(train_spec: str, test_spec: str, max_train: int | None, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """Train and test splits with shared label ids; train subsampled (uniformly, seeded) to at most `max_train`."""
    train = load_labelled(train_spec)
    test = load_labelled(test_spec, classes=train.classes)
    if max_train is not None and len(train) > max_train:
        pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train])
        train = train.subset(pick)
    return train, test
