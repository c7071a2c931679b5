"""Atomic file writes: a killed process never leaves a half-written file under the final name.

An output folder carries a marker naming the stage that wrote it (`MARKER`): `atomic_dir` replaces only a folder that
is absent, empty or marked by the same stage; the locks and overlap checks around it are in amoe_core/outputs.py.
Files and folders are created with the modes the user's umask gives (mkstemp/mkdtemp alone would make them 0600/0700,
unreadable to a teammate or a dashboard running as another user). A memmap is created only where the disk has room
for all of it (`create_memmap`: a page that cannot be written kills the process by SIGBUS, with no message). Files a
user names are read bounded (`read_user_text`, `read_user_yaml`, at the end).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from amoe_core.errors import AmoeError, ConfigError

log = logging.getLogger(__name__)
MARKER = ".amoe-output.json"  # names the stage that wrote an output folder (amoe_core/outputs.py)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` keeps its previous content.
    `suffix` lets writers that insist on an extension (np.save, PIL) keep it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # again: a writer may have made a new file (safetensors: 0600)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        raise AmoeError(f"{os_error_line(e, path)}; it needed more than the {written} bytes written") from e
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike, suffix: str = "") -> None:
    """The temporary files of `atomic_path(path, suffix)` writes that a kill interrupted. Call it only while holding
    `path`'s output lock (amoe_core/outputs.py): then no live writer owns one of them."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def naming_errors(path: str | os.PathLike, size: int | None = None) -> Iterator[None]:
    """Write errors carry no file name (`write()` knows only a descriptor): add it, and the size being written, so
    a full disk is reported with where and how much (`os_error_line`). Survives pickling from pool workers."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        what = f"{e.strerror}; {size} bytes to write" if size is not None else e.strerror
        raise OSError(e.errno, what, str(path)) from None


@contextlib.contextmanager
def full_disk_as_os_error(path: str | os.PathLike) -> Iterator[None]:
    """safetensors (SafetensorError) and torch.save (RuntimeError) report a full disk as their own exceptions, a
    traceback to the user: raised again as the OSError(ENOSPC) it is, naming `path` (the CLI: one line, exit 2)."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        text = str(e)
        full = any(m in text for m in ("os error 28", "No space left", "StorageFull", "QuotaExceeded"))
        if not full and "file write failed" in text:  # torch's writer drops the errno: judge by the space left
            probe = Path(path)
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            full = shutil.disk_usage(probe).free < (1 << 20)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def write_named(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary `path`; on failure nothing partial is left there."""
    try:
        with naming_errors(path, len(data)):
            Path(path).write_bytes(data)
    except OSError:
        Path(path).unlink(missing_ok=True)
        raise


# errors a user fixes (space, permissions, a file where a folder should be): one line, exit 2, not a traceback
USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def os_error_line(e: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for a write that failed for a reason the user can fix, naming where and what to do."""
    where = str(path or e.filename or "?")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        probe = Path(where)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free if probe.exists() else 0
        return f"{where!r}: {e.strerror} ({free} bytes free there); free space or choose another output"
    if e.errno == errno.EROFS:
        return f"cannot write {where!r}: read-only file system; choose a writable output"
    if e.errno == errno.ENOTDIR:
        return f"cannot write {where!r}: a parent of it is a file, not a folder; choose another output"
    return f"cannot write {where!r}: {e.strerror}; check its permissions or choose another output"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------- marker
def show_path(path: str | os.PathLike) -> str:
    """A path as error messages quote it."""
    return repr(str(path))


def written_by(path: str | os.PathLike) -> str | None:
    """The stage whose marker `path` carries, or None."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def _check_parent_is_a_folder(field: str, path: str | os.PathLike) -> None:
    """The nearest existing parent of an output must be a folder (a file there would make every write fail)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{field} = {show_path(path)}: {parent} is a file, not a folder; choose another output"
                )
            break


def check_output(field: str, path: str | os.PathLike, stage: str, legacy: tuple[str, ...] = ()) -> None:
    """Refuse an output that `stage` may not replace: a file, or a non-empty directory without its marker.

    `stage` is the name in the marker: the output's params field (`sample.out`), or the command (`export`).
    `legacy` names files that together identify an output written before markers existed (accepted as the stage's).
    """
    p = Path(path)
    _check_parent_is_a_folder(field, path)
    if not p.exists() and not p.is_symlink():
        return
    if not p.is_dir():
        raise ConfigError(
            f"{field} = {show_path(path)}: exists and is not a directory; choose a new or empty directory"
        )
    owner = written_by(p)
    if owner == stage or (owner is None and legacy and all((p / f).exists() for f in legacy)):
        return
    if owner is None and not any(p.iterdir()):
        return
    what = f"was written by `{owner}`" if owner else "holds files this stage did not write"
    raise ConfigError(
        f"{field} = {show_path(path)}: {what}; nothing there is replaced: choose a new or empty directory for {stage}"
    )


def owns_file(path: str | os.PathLike, header: bytes) -> bool:
    """Whether `path` is a regular file that starts with `header` (the first line this platform writes there)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(header)) == header
    except OSError:
        return False


def check_file_output(field: str, path: str | os.PathLike, header: bytes, beside: tuple[str, ...] = ()) -> None:
    """The ownership rule for a single-file output: `path` may replace only a file this platform wrote, one that
    starts with `header`; the files named `beside` (plots written next to it) only when absent or when `path` is
    already ours. Anything else exits 2 naming the path; nothing is written."""
    p = Path(path)
    _check_parent_is_a_folder(field, path)
    if p.is_dir():
        raise ConfigError(f"{field} = {show_path(path)}: is a directory; give the path of a file to write")
    ours = owns_file(p, header)
    if (p.exists() or p.is_symlink()) and not ours:
        raise ConfigError(
            f"{field} = {show_path(path)}: exists and was not written by amoe (it does not start with "
            f"{header.decode()!r}); nothing is replaced: choose a new file or remove that one"
        )
    for name in beside:
        other = p.parent / name
        if (other.exists() or other.is_symlink()) and not ours:
            raise ConfigError(
                f"{field} = {show_path(path)}: writing it would replace {show_path(other)} beside it, which amoe did "
                "not write; choose another folder"
            )


def mark_output(path: str | os.PathLike, stage: str) -> None:
    """Record in `path` that `stage` owns it (what `check_output` accepts on the next run)."""
    atomic_write_json(Path(path) / MARKER, {"stage": stage})


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, stage: str, field: str | None = None, legacy: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; on success it replaces `path` as a whole.

    Only a directory this stage wrote is replaced: `path` must be absent, empty or carry `stage`'s marker
    (`check_output`; `field` names it in errors, default `stage`; `legacy`: files that identify an output
    written before markers existed), and the new directory carries that marker. On an exception the
    temporary directory is removed and `path` keeps its previous content, so a killed or failed stage never leaves a
    directory that mixes old and new files.
    """
    path, field = Path(path), field or stage
    check_output(field, path, stage, legacy)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        mark_output(tmp, stage)
        check_output(field, path, stage, legacy)  # again: the directory may have been filled while the stage ran
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def create_memmap(field: str, path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> Any:
    """np.lib.format.open_memmap(path, "w+") with its blocks reserved first: a memmap's pages are written only when
    flushed, and a page the disk has no room for kills the process by SIGBUS (no message, a stale file left). Here a
    disk without room is one line, exit 2, naming the path and the bytes needed, and the file is removed."""
    import numpy as np  # start-up time: the CLI imports this module; numpy only for the stages that write memmaps

    path = Path(path)
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize + 4096  # + the .npy header (at most a page)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    full = f"{field}: {show_path(path)} needs {need} bytes and {{}} bytes are free there; free space or choose another {field}"
    if free < need:
        raise AmoeError(full.format(free))
    try:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)  # the space is taken now, not when a page is written
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: checked above
                raise
        finally:
            os.close(fd)
    except OSError as e:
        path.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise AmoeError(full.format(shutil.disk_usage(path.parent).free)) from None
    return mm


def _remove_leftovers(path: Path) -> None:
    """The temporary and old folders of an `atomic_dir(path)` attempt that was killed (`.X.<8 chars>.tmp`,
    `.X.old-PID`). Every caller holds `path`'s output lock (amoe_core/outputs.py), so none of them is in use."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:[A-Za-z0-9_]{{8}}\.tmp|old-\d+)")
    for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------------------- reading
# Bounded reads of files a user names (params files, exported overrides): a regular file only, at most a size cap,
# and YAML without aliases. `/dev/zero` as `--params` used to grow the process until the kernel's OOM killer took it
# (and maybe other jobs), a FIFO blocked forever, and a few hundred bytes of nested YAML aliases (an "alias bomb", in
# any free-form field such as launch.slurm_extra) expanded to gigabytes once the value was walked.
MAX_PARAMS_BYTES = 1 << 20  # params.yaml is ~10 KB; a megabyte is a generous bound for any hand-written file


def read_user_text(field: str, path: str | os.PathLike, max_bytes: int = MAX_PARAMS_BYTES) -> str:
    """The text of a user's file: refused at once (one line) if it is not a regular file, is larger than
    `max_bytes` or is not UTF-8. Opened without blocking, so a FIFO cannot hang the open."""
    shown = repr(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise ConfigError(f"{field} {shown}: is a directory; give the file") from None
    except OSError as e:
        raise ConfigError(f"{field} {shown}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{field} {shown}: is a directory; give the file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{field} {shown}: not a regular file (a device, FIFO or socket); give a text file")
        data = f.read(max_bytes + 1)  # one byte more: a file that grew past the cap is noticed, not read on
    if len(data) > max_bytes:
        raise ConfigError(f"{field} {shown}: larger than {max_bytes} bytes; that is no params file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{field} {shown}: not a text YAML file (not UTF-8)") from None


class NoAliasLoader(yaml.SafeLoader):
    """safe_load without YAML aliases (`*name`): each one may repeat a subtree, so nested ones grow exponentially."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*name) are not accepted (line {mark.line + 1}); write the value out", mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """yaml.safe_load without aliases (NoAliasLoader)."""
    return yaml.load(text, Loader=NoAliasLoader)


def read_user_yaml(field: str, path: str | Path) -> Any:
    """A user's YAML file, bounded (`read_user_text`) and without aliases; a parse error is one line."""
    try:
        return load_yaml(read_user_text(field, path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{field} {str(path)!r}: not valid YAML ({str(e).splitlines()[0]})") from None
