"""Reading params.yaml: `load_params(path, overrides)` reads the YAML file, applies DVC-style `-S section.key=value`
overrides and validates everything (`validate_params`). Paths are relative to the working directory (the repository
root, like DVC). Input paths are checked by the stage that reads them (`errors.require_path`), since earlier stages
create them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from amoe_core.config.params import Params, validate_params
from amoe_core.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one DVC-style `a.b.c=value` override in place; the value is parsed as YAML (`3`, `true`, `[1, 2]`)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {dotted}: cannot parse value {raw!r} ({e.__class__.__name__})") from None
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, keys[: i + 1])]
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {dotted}: {'.'.join(keys[: i + 1])} is a value, not a section")
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys)] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, path: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {'.'.join(path)}: {key!r} is not an index of a list of {len(node)} items")
    return int(key)


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load params.yaml (defaults when the file is absent and no path was given) and apply overrides."""
    data: dict[str, Any] = {}
    p = Path(path) if path is not None else DEFAULT_PARAMS
    if p.exists():
        try:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except IsADirectoryError:
            raise ConfigError(f"--params {str(p)!r}: is a directory; give the params.yaml file") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"--params {str(p)!r}: not a text YAML file ({type(e).__name__})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if data is None:
            raise ConfigError(f"{p}: is empty; write the sections you change, or remove it to use the defaults")
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    elif path is not None:
        raise ConfigError(f"--params {str(p)!r}: file does not exist")
    for o in overrides or []:
        apply_override(data, o)
    return validate_params(data)
