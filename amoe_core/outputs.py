"""Output guard: a stage never deletes or replaces what it did not write, and one writer per output at a time.

Three rules, checked before any work (`claim_outputs` applies all of them):
- an output directory is absent, empty, or carries the marker file this stage wrote there (`MARKER`, naming the
  stage); anything else is someone's data and is refused (`check_output`, in amoe_core/io.py beside `atomic_dir`);
- an output never overlaps an input: by resolved path, neither equals, contains nor sits inside the other;
- one lock per output: `.<name>.lock` beside it, an flock held for the stage's lifetime with the holder's PID inside.
  The kernel drops an flock when its holder dies, so a lock left by a killed process is taken over at once.
  A job of several processes is one writer: its rank 0 holds the lock, and processes a lock holder launched (a
  stage relaunching itself under torchrun) find it in `HELD_LOCKS` and do not ask again.
Not `filelock`: it waits or times out, where a second writer here must fail at once naming the holder's PID, and it
has no notion of the processes a holder launched writing under its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from amoe_core.errors import AmoeError, ConfigError

# the marker rule lives in io (atomic_dir replaces only a marked folder); stages import it from here with the others
from amoe_core.io import MARKER, check_output, mark_output, show_path, written_by  # noqa: F401

HELD_LOCKS = "AMOE_HELD_LOCKS"  # environment: lock files held by this process or the one that launched it


# ---------------------------------------------------------------------------------------------------------- overlap
def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_disjoint(outputs: Mapping[str, str | os.PathLike], inputs: Mapping[str, str | os.PathLike]) -> None:
    """Refuse an output that equals, contains or sits inside an input (resolved: symlinks and `..` followed)."""
    for out_field, out in outputs.items():
        o = Path(out).resolve()
        for in_field, src in inputs.items():
            i = Path(src).resolve()
            if _inside(o, i) or _inside(i, o):
                raise ConfigError(
                    f"{out_field} = {show_path(out)} overlaps the input {in_field} = {show_path(src)}: writing there would "
                    "replace or delete what the stage reads; choose an output outside its inputs"
                )


# ---------------------------------------------------------------------------------------------------------- lock
def lock_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.parent / f".{p.name}.lock"


def job_rank() -> int:
    """This process's rank in its job, known before torch.distributed starts: torchrun's RANK, or the task's rank
    inside a submitit job (SLURM or local executor); 0 for a lone process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SUBMITIT_EXECUTOR" in os.environ:
        import submitit  # start-up time: the CLI imports this module; submitit (~80 ms) only inside a job

        with contextlib.suppress(RuntimeError):
            return int(submitit.JobEnvironment().global_rank)
    return 0


@contextlib.contextmanager
def output_lock(field: str, path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of output `path` for the block; a second writer fails at once naming the holder's PID.

    Other ranks of a job, and processes launched by the holder, write under the holder's lock (no lock of their own).
    """
    lp = lock_path(path)
    held = [h for h in os.environ.get(HELD_LOCKS, "").split(os.pathsep) if h]
    if str(lp.absolute()) in held or job_rank() != 0:
        yield
        return
    try:
        lp.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{field} = {show_path(path)}: cannot create its folder ({e.strerror})") from None
    while True:
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # /proc/self, a read-only or foreign folder: one line, not a traceback
            raise ConfigError(
                f"{field} = {show_path(path)}: cannot create its lock {show_path(lp)} there ({e.strerror}); "
                "choose a writable folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AmoeError(
                f"{field} = {show_path(path)} is being written by PID {holder} (lock {lp}); wait for it to finish "
                "or stop it, or choose another output"
            ) from None
        # The previous holder may have removed the file between our open and our flock: then we hold a lock on a
        # deleted inode that nobody else sees, so start over on the current file.
        try:
            same = os.stat(lp).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.environ[HELD_LOCKS] = os.pathsep.join([*held, str(lp.absolute())])  # inherited by what this stage launches
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.environ[HELD_LOCKS] = os.pathsep.join(held)
        with contextlib.suppress(OSError):
            os.unlink(lp)  # while still holding it: a waiter that opened the old file retries on a new one
        os.close(fd)


@contextlib.contextmanager
def claim_outputs(
    outputs: Mapping[str, str | os.PathLike],
    inputs: Mapping[str, str | os.PathLike] | None = None,
    owner: str | None = None,
    legacy: tuple[str, ...] = (),
) -> Iterator[None]:
    """All three rules for one stage run: outputs {field: path} disjoint from inputs, each replaceable (its marker
    names `owner`, default its field), each locked. Checked again once the locks are held: a concurrent writer may
    have created an output meanwhile."""
    check_disjoint(outputs, inputs or {})
    for field, path in outputs.items():
        check_output(field, path, owner or field, legacy)
    with contextlib.ExitStack() as stack:
        for field, path in outputs.items():
            stack.enter_context(output_lock(field, path))
        for field, path in outputs.items():
            check_output(field, path, owner or field, legacy)
        yield
