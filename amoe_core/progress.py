"""Progress bars and logging that go quiet under `--quiet` or in CI."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Third-party loggers whose routine messages read as failures: faiss's loader reports at INFO that the AVX2 build
# is missing (`ModuleNotFoundError ... swigfaiss_avx2`) before loading the generic one; matplotlib warns that it
# builds its font cache on first use, or uses a temporary cache directory when ~/.config is not writable. All are
# normal; `-v` shows them again.
QUIET_LOGGERS = {"faiss.loader": logging.WARNING, "matplotlib": logging.ERROR}


def is_quiet() -> bool:
    return os.environ.get("AMOE_QUIET", "") not in ("", "0") or os.environ.get("CI", "") not in ("", "0", "false")


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (rates in items/s) on stderr, disabled when quiet or when stderr is not a terminal."""
    kwargs.setdefault("disable", is_quiet() or not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    if quiet:
        os.environ["AMOE_QUIET"] = "1"
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level if verbose else max(level, floor))
