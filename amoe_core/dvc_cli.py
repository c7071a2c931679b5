"""Run a `dvc` command as a child process (the DVC of this interpreter's environment), with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

from amoe_core.errors import AmoeError

# the end of DVC's own message is what names the problem; more would bury it
ERROR_TAIL_CHARS = 2000


class DvcError(AmoeError):
    """A `dvc` command failed; the message holds the command, its exit status and the end of what it printed."""


def run_dvc(*args: str) -> str:
    """`dvc ARGS...` in the current directory; returns its stdout, raises `DvcError` when it exits non-zero."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-ERROR_TAIL_CHARS:]
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}): {said}")
    return proc.stdout
