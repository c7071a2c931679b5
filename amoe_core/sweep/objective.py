"""The sweep objective: a short distillation, then kNN on the demo splits (the paper's headline metric).

`distill_knn(trial, params)` calls the same stage functions as `amoe distill` and `amoe evaluate`. Intermediate
values for median pruning come from the run's curves (tracking/curves.py): the mean of the unweighted feature-loss
terms (summary/patch per teacher, on PHI-S normalised targets, so comparable across trials whatever their loss weights),
negated because the study maximises accuracy. The pruning decision is taken once training returns, before the
(more expensive) evaluation.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from amoe_core.config.params import Params
from amoe_core.errors import AmoeError, ConfigError, require_path
from amoe_core.stages import stage_function
from amoe_core.tracking import eval_record
from amoe_core.tracking.runs import SWEEP_DIR, RunDir
from amoe_core.train.distill import check_inputs as check_distill_inputs

Objective = Callable[[optuna.Trial, Params], float]


def trial_run_id(number: int) -> str:
    return f"t{number:04d}"


def trial_runs_dir(params: Params) -> Path:
    """runs/_sweep/<study>/: trials stay out of runs/ (the dashboard shows them on demand, `amoe report` never)."""
    return Path(params.distill.runs_dir) / SWEEP_DIR / params.sweep.study


def objective_name(params: Params) -> str:
    """The study's metric name, as Optuna and optuna-dashboard show it."""
    s = params.sweep
    what = {"knn": "kNN accuracy", "linear": "linear probe accuracy", "zero_shot": "zero-shot accuracy"}
    name = what.get(s.metric, f"{s.metric} (mIoU)" if s.metric == "segmentation" else s.metric)
    k = f", k={s.k}" if s.metric == "knn" else ""
    return f"{name} ({s.feature}, {params.evaluate.main_resolution}px{k}, mean over datasets)"


# What the intermediate values are (a study user attribute, shown by optuna-dashboard): the pruner compares them in
# the study's direction (maximise), hence the sign.
INTERMEDIATE = "negated mean feature loss (summary + patch terms, PHI-S space) per logged step; higher is better"


def trial_steps(params: Params) -> int:
    """Distillation steps of one trial: fixed, or a fixed token budget over the trial's tokens per step."""
    budget = params.sweep.token_budget
    if budget is None:
        return params.sweep.steps
    return max(1, budget // (params.packing.c_max * params.packing.seqs_per_step))


def feature_loss(record: dict[str, Any]) -> float | None:
    """Mean of the record's `loss/<teacher>/summary` and `loss/<teacher>/patch` terms (None when it has none)."""
    terms = [v for k, v in record.items() if k.startswith("loss/") and k.endswith(("/summary", "/patch"))]
    terms = [float(v) for v in terms if isinstance(v, int | float) and math.isfinite(v)]
    return sum(terms) / len(terms) if terms else None


def report_intermediate(trial: optuna.Trial, run: RunDir) -> int:
    """Report -feature_loss of every logged step to the trial; returns how many values were reported."""
    n = 0
    for rec in run.metrics():
        value = feature_loss(rec)
        if value is not None and "step" in rec:
            trial.report(-value, step=int(rec["step"]))
            n += 1
    return n


def eval_score(ev: dict[str, Any], metric: str, feature: str, resolution: int, k: int) -> float:
    """Mean over datasets of one eval.json metric (eval_record.METRICS: knn at `k`, linear, zero_shot, segmentation,
    segmentation.pixel_acc) of `feature` at `resolution` px."""
    section = eval_record.METRICS[metric][0]
    found = ev.get(section) or {}
    if not found:
        raise AmoeError(f"eval.json holds no {section} results; check the evaluate section of the sweep's params")
    scores = []
    for dataset, by_feature in sorted(found.items()):
        if feature not in by_feature:
            raise ConfigError(f"sweep.feature = {feature!r}: not in eval.json for {dataset}; have {sorted(by_feature)}")
        v = eval_record.value(ev, metric, dataset, feature, eval_record.res_key(resolution), f"k{k}")
        if v is None:
            where = "evaluate.ks/resolutions" if metric == "knn" else "evaluate.main_resolution"
            raise ConfigError(
                f"sweep.metric = {metric!r} (k = {k}) at {resolution}px: not evaluated for {dataset}; check {where}"
            )
        scores.append(v)
    return sum(scores) / len(scores)


def distill_knn(trial: optuna.Trial, params: Params) -> float:
    """Short distillation (`params.distill.steps`, set by the search) then `sweep.metric` (kNN by default) on the
    evaluation splits."""
    run = RunDir(params.distill.runs_dir / params.distill.run)
    stage_function("distill")(params)
    report_intermediate(trial, run)
    if trial.should_prune():
        raise optuna.TrialPruned(
            f"feature loss after {params.distill.steps} steps is below the median of earlier trials"
        )
    stage_function("evaluate")(params, run=params.distill.run)
    sw = params.sweep
    score = eval_score(run.eval(), sw.metric, sw.feature, params.evaluate.main_resolution, sw.k)
    trial.set_user_attr("run", params.distill.run)
    return score


def check_distill_knn_inputs(params: Params) -> None:
    """What every trial of `distill_knn` reads: a missing input stops the sweep before its first trial (exit 2),
    instead of failing each trial and leaving them in the study."""
    check_distill_inputs(params)
    for ds in params.evaluate.datasets:
        for split in ("train", "test"):
            spec = getattr(ds, split)
            require_path(f"evaluate.datasets.{ds.name}.{split}", spec.partition(":")[2] or spec, "dataset")


# An objective may carry `check_inputs(params)`: `amoe sweep` calls it once before any trial.
distill_knn.check_inputs = check_distill_knn_inputs  # type: ignore[attr-defined]


def load_objective(spec: str) -> Objective:
    """Resolve `module:function` (sweep.objective) to the objective callable."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"sweep.objective = {spec!r}: expected module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"sweep.objective = {spec!r}: cannot import ({e})") from None
    return fn
