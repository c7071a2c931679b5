"""Image sources: `folder:PATH` (any directory tree of files) and `shards:PATH` (existing WebDataset tars).

`list_items` turns source specs into a deterministic, sorted list of `Item`s; `read_item` fetches one item's bytes.
Naming rules for a folder source (the demo pool's layout `pool/<source>/<label>/<file>` is one instance):
- source = the first path component under PATH when the file sits in a subfolder, else the folder's own name;
- label = the file's parent folder name when it is deeper than that source folder, else None.

Hostile trees are bounded: only regular files are read (a FIFO, a device such as /dev/zero or a socket is skipped),
a directory reached again through a symlink (a loop, or a second link to it) is visited once per inode, and every
path left out at listing time (with why: not a regular file, dangling symlink, directory already visited,
unreadable directory) is returned for the ingest report. Shards must be plain tars (compressed ones are refused)
and their json metadata members are read only up to `MAX_META_BYTES`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from amoe_core.data.shards import IMAGE_SUFFIXES
from amoe_core.errors import ConfigError

SOURCE_KINDS = ("folder", "shards")
MAX_META_BYTES = 64 * 1024  # a sample's json metadata is a few hundred bytes; larger members are ignored


class TooLarge(OSError):
    """A file above ingest.max_bytes: never read into memory."""


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
    return f"{_slug(source)}_{hashlib.blake2b(ident.encode('utf-8', 'surrogateescape'), digest_size=8).hexdigest()}"


def list_items(specs: list[SourceSpec], unlisted: list[dict[str, str]] | None = None) -> list[Item]:
    """Every item of the sources, sorted; paths left out are appended to `unlisted` as {path, reason, detail}."""
    items: list[Item] = []
    left: list[dict[str, str]] = [] if unlisted is None else unlisted
    seen: dict[str, str] = {}  # key -> the file (resolved) it names
    files: set[tuple[str, int]] = set()
    for spec in specs:
        for it in _folder_items(spec.path, left) if spec.kind == "folder" else _shard_items(spec.path, left):
            real = os.path.realpath(it.path)
            if (real, it.offset) in files:
                raise ConfigError(f"ingest.sources: {it.path} is listed twice (overlapping sources?)")
            files.add((real, it.offset))
            if it.key in seen:
                # another root with the same layout (/a/pool/x.png, /b/pool/x.png): a distinct file, so its key also
                # hashes its resolved path (keys of the first source that has it stay as they always were)
                it = dataclasses.replace(it, key=make_key(it.source, f"{real}@{it.offset}"))
            seen[it.key] = real
            items.append(it)
    items.sort(key=lambda it: (it.source, it.path, it.offset))
    return items


def _folder_items(root: Path, unlisted: list[dict[str, str]]) -> list[Item]:
    out: list[Item] = []
    root_name = root.resolve().name

    def unreadable(e: OSError) -> None:
        unlisted.append(
            {"path": _shown(e.filename or "?"), "reason": "unreadable_directory", "detail": e.strerror or str(e)}
        )

    st = os.stat(root)
    visited = {(st.st_dev, st.st_ino)}
    for dirpath, dirnames, filenames in _walk(str(root), unreadable):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            try:
                st = os.stat(os.path.join(dirpath, d))
            except OSError as e:
                unreadable(e)
                continue
            if (st.st_dev, st.st_ino) in visited:  # a symlink loop or a second link to a folder: walk it once
                unlisted.append({"path": os.path.join(dirpath, d), "reason": "directory_already_visited",
                                 "detail": "reached again through a symlink; walked once"})  # fmt: skip
                continue
            visited.add((st.st_dev, st.st_ino))
            keep.append(d)
        dirnames[:] = keep
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
            except OSError as e:
                reason = "dangling_symlink" if path.is_symlink() else "unreadable"
                unlisted.append({"path": _shown(path), "reason": reason, "detail": e.strerror or str(e)})
                continue
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block forever, /dev/zero never ends
                unlisted.append({"path": _shown(path), "reason": "not_a_regular_file", "detail": _kind(st.st_mode)})
                continue
            rel = (rel_dir / fn).as_posix()
            if not _utf8(rel):  # a name no UTF-8 can hold (`bad_\xff.png`): manifest and keys are text
                unlisted.append({"path": _shown(path), "reason": "undecodable_name",
                                 "detail": "the file name is not valid UTF-8; rename it to include it"})  # fmt: skip
                continue
            out.append(Item(source, label, str(path), fn, make_key(source, rel), st.st_size, st.st_mtime_ns))
    return out


def _walk(top: str, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(top, followlinks=True) without recursion (os.walk recurses in Python 3.11: a folder tree deeper than
    ~1000 levels raised RecursionError); same order, and the caller prunes `dirnames` in place the same way."""
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as e:
            onerror(e)
            continue
        dirs, files = [], []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows symlinks, like followlinks=True
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(e.name)
        yield path, dirs, files
        stack.extend(os.path.join(path, d) for d in reversed(dirs))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: str | os.PathLike) -> str:
    """A path for the report (JSON text): undecodable bytes as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):  # fmt: skip
        if test(mode):
            return name
    return "special file"


def _shard_items(root: Path, unlisted: list[dict[str, str]]) -> list[Item]:
    """Members of existing WebDataset tars: one image entry per sample, source/label from its json when present."""
    out: list[Item] = []
    for tar_path in sorted(root.glob("*.tar")):
        st = tar_path.stat()
        if not stat.S_ISREG(st.st_mode):
            unlisted.append({"path": str(tar_path), "reason": "not_a_regular_file", "detail": _kind(st.st_mode)})
            continue
        samples: dict[str, dict] = {}
        try:
            # "r:" reads plain tars only: a compressed one would be inflated without bound, and item offsets
            # (read_item seeks into the file) only mean something in an uncompressed tar
            with tarfile.open(tar_path, "r:") as tf:
                for m in tf:
                    if not m.isfile() and not m.isdir():  # links and devices carry no image bytes of their own
                        unlisted.append({"path": f"{tar_path}:{m.name}", "reason": "tar_member_not_a_file",
                                         "detail": _member_kind(m)})  # fmt: skip
                        continue
                    if m.isdir() or "." not in Path(m.name).name:
                        continue
                    base, ext = _split_key(m.name)
                    s = samples.setdefault(base, {})
                    if ext == "json":
                        if m.size > MAX_META_BYTES:
                            unlisted.append({"path": f"{tar_path}:{m.name}", "reason": "metadata_too_large",
                                             "detail": f"{m.size} bytes > {MAX_META_BYTES}; ignored"})  # fmt: skip
                            s["meta"] = {}
                            continue
                        try:
                            s["meta"] = json.loads(tf.extractfile(m).read(MAX_META_BYTES))
                        except (ValueError, OSError, RecursionError):
                            s["meta"] = {}
                    elif f".{ext}" in IMAGE_SUFFIXES and "member" not in s:
                        s["member"] = m
        except (tarfile.TarError, OSError) as e:  # one bad shard is reported and skipped; the others are read
            unlisted.append({"path": str(tar_path), "reason": "unreadable_tar", "detail": _tar_problem(tar_path, e)})
            continue
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


COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def _tar_problem(tar_path: Path, e: Exception) -> str:
    """Why a shard cannot be read: compressed (by its magic bytes, not a guess) or damaged."""
    with open(tar_path, "rb") as f:
        head = f.read(6)
    for magic, name in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return f"{name}-compressed; shards are read as plain tars: decompress it first (e.g. gunzip -c X > Y.tar)"
    return f"not a readable plain tar (truncated or damaged: {e}); skipped"


def _member_kind(m: tarfile.TarInfo) -> str:
    for test, name in ((m.issym, "symlink"), (m.islnk, "hardlink"), (m.ischr, "character device"),
                       (m.isblk, "block device"), (m.isfifo, "fifo")):  # fmt: skip
        if test():
            return f"{name}; only regular members are read"
    return "special member; only regular members are read"


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything up to the first dot of the file name."""
    d, _, fn = name.rpartition("/")
    stem, _, ext = fn.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def read_item(item: Item, max_bytes: int) -> bytes:
    """The item's bytes: a regular file only (opened without blocking, so a FIFO swapped in after listing cannot
    hang), at most its listed size, and never more than `max_bytes` (`TooLarge`)."""
    if item.size > max_bytes:
        raise TooLarge(f"{item.size} bytes > ingest.max_bytes = {max_bytes}")
    fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{item.path}: not a regular file")
        if item.offset >= 0:
            f.seek(item.offset)
        data = f.read(item.size + 1)  # one byte more: a file that grew since listing is noticed, not read on
    if len(data) != item.size and item.offset < 0:
        raise OSError(f"{item.path}: changed since listing ({item.size} bytes listed)")
    return data[: item.size]
