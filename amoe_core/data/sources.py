"""Image sources: `folder:PATH` (any directory tree of files) and `shards:PATH` (existing WebDataset tars).

`list_items` turns source specs into a deterministic, sorted list of `Item`s; `read_item` fetches one item's bytes.
Naming rules for a folder source (the demo pool's layout `pool/<source>/<label>/<file>` is one instance):
- source = the first path component under PATH when the file sits in a subfolder, else the folder's own name;
- label = the file's parent folder name when it is deeper than that source folder, else None.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from amoe_core.errors import ConfigError

SOURCE_KINDS = ("folder", "shards")


@dataclass(frozen=True)
class Item:
    source: str
    label: str | None
    path: str  # the file, or the tar for a shard member
    name: str  # the file name (its extension is what the file claims to be)
    key: str  # deterministic sample key: `<source>_<16 hex of the path's digest>`
    size: int
    mtime_ns: int
    offset: int = -1  # byte offset of a tar member's data (-1 for plain files)


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_source(spec: str, field: str = "ingest.sources") -> SourceSpec:
    """`folder:PATH` / `shards:PATH` -> SourceSpec; a malformed or missing source fails before any work."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not path:
        raise ConfigError(f"{field}: invalid source {spec!r}; use folder:PATH or shards:PATH")
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{field}: {spec!r}: {p} is not a directory; point it at a folder of images (or shards)")
    if kind == "shards" and not any(p.glob("*.tar")):
        raise ConfigError(f"{field}: {spec!r}: no *.tar WebDataset shards in {p}")
    return SourceSpec(kind, p)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def make_key(source: str, ident: str) -> str:
    # WebDataset splits a sample's key from its extension at the first dot of the file name: keys carry no dots.
    return f"{_slug(source)}_{hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()}"


def list_items(specs: list[SourceSpec]) -> list[Item]:
    items: list[Item] = []
    for spec in specs:
        items.extend(_folder_items(spec.path) if spec.kind == "folder" else _shard_items(spec.path))
    items.sort(key=lambda it: (it.source, it.path, it.offset))
    seen: set[str] = set()
    for it in items:
        if it.key in seen:
            raise ConfigError(f"ingest.sources: {it.path} is listed twice (overlapping sources?)")
        seen.add(it.key)
    return items


def _folder_items(root: Path) -> list[Item]:
    out: list[Item] = []
    root_name = root.resolve().name
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        parts = rel_dir.parts
        source = parts[0] if parts else root_name
        label = parts[-1] if len(parts) >= 2 else None
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            path = Path(dirpath) / fn
            try:
                st = path.stat()
            except OSError:  # a dangling symlink: nothing to read
                continue
            rel = (rel_dir / fn).as_posix()
            out.append(Item(source, label, str(path), fn, make_key(source, rel), st.st_size, st.st_mtime_ns))
    return out


def _shard_items(root: Path) -> list[Item]:
    """Members of existing WebDataset tars: one image entry per sample, source/label from its json when present."""
    out: list[Item] = []
    for tar_path in sorted(root.glob("*.tar")):
        st = tar_path.stat()
        samples: dict[str, dict] = {}
        try:
            with tarfile.open(tar_path) as tf:
                for m in tf:
                    if not m.isfile() or "." not in Path(m.name).name:
                        continue
                    base, ext = _split_key(m.name)
                    s = samples.setdefault(base, {})
                    if ext == "json":
                        try:
                            s["meta"] = json.loads(tf.extractfile(m).read())
                        except (ValueError, OSError):
                            s["meta"] = {}
                    elif ext in ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff") and "member" not in s:
                        s["member"] = m
        except tarfile.TarError as e:
            raise ConfigError(f"ingest.sources: {tar_path} is not a readable tar ({e})") from None
        for base, s in samples.items():
            m = s.get("member")
            if m is None:
                continue
            meta = s.get("meta") if isinstance(s.get("meta"), dict) else {}
            source = str(meta.get("source") or root.resolve().name)
            label = meta.get("label")
            ident = f"{tar_path.name}/{base}"
            out.append(
                Item(source, None if label is None else str(label), str(tar_path), Path(m.name).name,
                     make_key(source, ident), m.size, st.st_mtime_ns, m.offset_data)
            )  # fmt: skip
    return out


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything up to the first dot of the file name."""
    d, _, fn = name.rpartition("/")
    stem, _, ext = fn.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def read_item(item: Item) -> bytes:
    with open(item.path, "rb") as f:
        if item.offset >= 0:
            f.seek(item.offset)
            return f.read(item.size)
        return f.read()
