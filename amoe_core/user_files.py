"""Bounded reads of files a user names (params files, exported overrides): a regular file only, at most a size cap,
and YAML without aliases.

`/dev/zero` as `--params` used to grow the process until the kernel's OOM killer took it (and maybe other jobs), a
FIFO blocked forever, and a few hundred bytes of nested YAML aliases (an "alias bomb", in any free-form field such as
launch.slurm_extra) expanded to gigabytes once the value was walked. A params file needs neither: it is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from amoe_core.errors import ConfigError

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
