"""User-facing errors: anything a user can fix (bad params, missing inputs, bad data) raises `AmoeError`.

The CLI turns an `AmoeError` into one line on stderr and exit code 2, before any work when possible.
"""

from pathlib import Path


class AmoeError(Exception):
    """A problem with the user's input: the message names what is wrong and what to do."""


class ConfigError(AmoeError):
    """An invalid value in params.yaml or a `-S` override."""


def require_path(field: str, path, what: str = "file or directory") -> None:
    """Fail with a clear message when an input path that a stage reads does not exist."""
    if not Path(path).exists():
        raise ConfigError(
            f"{field} = {str(path)!r}: {what} does not exist; run the stage that produces it first or fix the path"
        )
