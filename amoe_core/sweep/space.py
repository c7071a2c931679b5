"""The search space of `amoe sweep`: batching (token-balanced packing) and loss settings, as `-S` override keys.

Each dimension is named by the params.yaml key it sets, so a trial's parameters are directly a list of overrides
that `load_params` and `dvc exp run -S` apply. The choices keep every combination valid: the largest per-image token
count (128) fits the smallest context (c_max 128) and the smallest max_tokens (32) is above every min_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import yaml

from amoe_core.config.params import Params
from amoe_core.errors import ConfigError


@dataclass(frozen=True)
class Dim:
    """One searched parameter: categorical `choices`, or a numeric range (`low`..`high`, `log`, `integer`)."""

    key: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


# Batching: context length C_max, images per sequence, the per-image token range, sequences (tokens) per step.
BATCHING = (
    Dim("packing.c_max", choices=(128, 256, 512)),
    Dim("packing.max_images_per_seq", low=4, high=16, integer=True),
    Dim("packing.min_tokens", choices=(2, 4, 8)),
    Dim("packing.max_tokens", choices=(32, 64, 128)),
    Dim("packing.seqs_per_step", low=2, high=16, integer=True, log=True),
)
# Loss: the relational term (ARKD of the paper, symmetric RKD of Park et al. 2019, or none) and its weight.
LOSS = (
    Dim("loss.relational", choices=("arkd", "rkd", "none")),
    Dim("loss.relational_weight", low=0.1, high=10.0, log=True),
)
# Feature-loss weights, one pair per teacher of params.yaml (`teachers.<i>.<term>_weight`).
TEACHER_WEIGHT = Dim("teachers.{i}.{term}_weight", low=0.25, high=4.0, log=True)
TEACHER_TERMS = ("summary", "patch")


def dimensions(params: Params) -> list[Dim]:
    """Every dimension for these params (the teacher-weight dimensions depend on how many teachers there are)."""
    dims = list(BATCHING + LOSS)
    for i, _ in enumerate(params.teachers):
        for term in TEACHER_TERMS:
            key = TEACHER_WEIGHT.key.format(i=i, term=term)
            dims.append(Dim(key, low=TEACHER_WEIGHT.low, high=TEACHER_WEIGHT.high, log=True))
    return dims


def selected(params: Params) -> list[Dim]:
    """The dimensions named in `sweep.search` (all when empty); unknown names fail with the list of valid ones."""
    dims = dimensions(params)
    if not params.sweep.search:
        return dims
    by_key = {d.key: d for d in dims}
    unknown = [k for k in params.sweep.search if k not in by_key]
    if unknown:
        raise ConfigError(f"sweep.search: unknown dimension(s) {unknown}; searchable: {', '.join(by_key)}")
    return [by_key[k] for k in params.sweep.search]


def format_override(key: str, value: Any) -> str:
    """`key=value` in the YAML spelling that `apply_override` and `dvc exp run -S` parse back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"{key}={text}"


def suggest(trial: optuna.Trial, params: Params) -> list[str]:
    """Sample one point of the space; returns it as `-S` overrides (also stored in the trial's user attrs)."""
    overrides = [format_override(d.key, d.suggest(trial, d.key)) for d in selected(params)]
    trial.set_user_attr("overrides", overrides)
    return overrides
