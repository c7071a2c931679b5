"""Labelled image folders, `root/<class>/.../<image>`: the one reader of the demo teachers' splits and of `folder:`
evaluation datasets. Each subfolder of `root` is a class; its images are found recursively; hidden files and folders
(a leading dot: `.DS_Store`, `.ipynb_checkpoints`) are skipped; an image is a file with an IMAGE_SUFFIXES extension
(the one list, shared with ingest and the shards)."""

from __future__ import annotations

from pathlib import Path

from amoe_core.data.shards import IMAGE_SUFFIXES
from amoe_core.errors import AmoeError


def _visible_images(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.rglob("*")
        if f.suffix.lower() in IMAGE_SUFFIXES
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def list_labelled_folder(root: Path, what: str) -> tuple[list[Path], list[str]]:
    """Every image under `root`'s class subfolders (sorted by class, then path) and its class name; `what` names the
    folder in errors (a spec or a params key). Raises AmoeError when `root` is no folder or holds no class images."""
    root = Path(root)
    if not root.is_dir():
        raise AmoeError(f"{what}: {root} is not a directory; give a folder with one subfolder per class")
    files: list[Path] = []
    names: list[str] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = _visible_images(d)
        files += found
        names += [d.name] * len(found)
    if not files:
        loose = any(f.suffix.lower() in IMAGE_SUFFIXES for f in root.iterdir())
        hint = "images lie directly in it: move them into one subfolder per class" if loose else "it holds no images"
        raise AmoeError(f"{what}: no images in class subfolders of {root} ({hint})")
    return files, names
