"""DVC-style `-S section.key=value` overrides applied to already loaded params (sweeps, job arrays)."""

from __future__ import annotations

from amoe_core.config.load import apply_override
from amoe_core.config.params import Params, validate_params


def with_overrides(params: Params, overrides: list[str]) -> Params:
    """`params` with `overrides` applied (the same parser and validation as `load_params(path, overrides)`)."""
    tree = params.model_dump(mode="json")
    for o in overrides:
        apply_override(tree, o)
    return validate_params(tree)
