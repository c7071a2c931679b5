"""The Prefect flows: one per stage group, the full pipeline chaining them, the sweep, and any single stage.

Every flow takes `overrides` (DVC's `-S section.key=value` spelling) and `params_file`, so the Prefect UI can start
any of them with parameters. Stages run through `flows.tasks` (DVC decides what is up to date).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from typing import Any

from prefect import flow

from flows import tasks
from flows.artifacts import STAGES

# The stage names as a choice list (a drop-down in the Prefect UI); what each does is in stage_flow's docstring.
Stage = Enum("Stage", {name.replace("-", "_"): name for name in STAGES}, type=str)

CURATION = ("embed", "cluster", "sample")
DATA = ("demo-pool", "ingest", "teachers-demo")


def _describe_stages(fn: Callable) -> Callable:
    """Fill `{stages}` in the docstring with what each stage does: Prefect shows it beside the `stage` field."""
    what = "; ".join(f"{name}: {desc}" for name, (_, desc) in STAGES.items())
    fn.__doc__ = (fn.__doc__ or "").replace("{stages}", f"which stage to run ({what}).")
    return fn


OVERRIDES = (
    'params.yaml overrides in DVC\'s spelling, e.g. ["distill.steps=500"]; every key, its type, default and meaning: '
    "`amoe params [SECTION]`."
)


def _describe_overrides(fn: Callable) -> Callable:
    """Give the `overrides` and `params_file` fields of the Prefect run form their description (from the docstring's
    Args section, which Prefect reads), pointing at `amoe params` where every key is documented."""
    doc = fn.__doc__ or ""
    if "Args:" not in doc:
        doc += (
            "\n\n    Args:\n        overrides: {overrides}\n        params_file: params file (default ./params.yaml).\n"
        )
        if "use_dvc" in inspect.signature(fn).parameters:
            doc += "        use_dvc: let DVC skip the stages whose outputs are up to date.\n"
    fn.__doc__ = doc.replace("{overrides}", OVERRIDES)
    return fn


@flow(name="amoe-stage", log_prints=True)
@_describe_overrides
@_describe_stages
def stage_flow(
    stage: Stage, overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> dict[str, Any]:
    """Any single stage of the pipeline, by name.

    Args:
        stage: {stages}
        overrides: {overrides} With any, the stage runs directly instead of through `dvc repro`.
        params_file: params file (default ./params.yaml).
        use_dvc: let DVC skip the stage when its outputs are up to date.
    """
    name = Stage(stage).value
    if name == "distill":
        return tasks.run_distill(overrides, params_file, use_dvc)
    return tasks.run_stage(name, overrides, params_file, use_dvc=use_dvc)


@flow(name="amoe-data", log_prints=True)
@_describe_overrides
def data_flow(overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True) -> list[dict]:
    """Demo pool -> shards -> demo teachers."""
    return [tasks.run_stage(s, overrides, params_file, use_dvc=use_dvc) for s in DATA]


@flow(name="amoe-curation", log_prints=True)
@_describe_overrides
def curation_flow(
    overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> list[dict]:
    """Embed the shard set, hierarchical k-means, balanced + random selections."""
    return [tasks.run_stage(s, overrides, params_file, use_dvc=use_dvc) for s in CURATION]


@flow(name="amoe-distillation", log_prints=True)
@_describe_overrides
def distillation_flow(
    overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> dict[str, Any]:
    """Train the student through `amoe submit distill` (SLURM when a cluster answers)."""
    return tasks.run_distill(overrides, params_file, use_dvc)


@flow(name="amoe-evaluation", log_prints=True)
@_describe_overrides
def evaluation_flow(
    run: str | None = None,
    teachers: bool = False,
    overrides: list[str] | None = None,
    params_file: str | None = None,
    use_dvc: bool = True,
) -> dict[str, Any]:
    """kNN, linear probe, cross-resolution, fidelity, PCA maps for one run (or the teachers' baselines)."""
    kwargs = {k: v for k, v in {"run": run, "teachers": teachers or None}.items() if v is not None}
    return tasks.run_stage("evaluate", overrides, params_file, kwargs=kwargs or None, use_dvc=use_dvc)


@flow(name="amoe-pipeline", log_prints=True)
@_describe_overrides
def pipeline_flow(
    overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> list[dict[str, Any]]:
    """The whole demo: data -> curation -> distillation -> evaluation -> report, in order; each stage waits for the
    previous one, and a failed stage stops the chain after its retries."""
    results = data_flow(overrides, params_file, use_dvc)
    results += curation_flow(overrides, params_file, use_dvc)
    results.append(distillation_flow(overrides, params_file, use_dvc))
    results.append(evaluation_flow(None, False, overrides, params_file, use_dvc))
    # the pipeline's own runs, beside them: docs/RESULTS.md is the committed ablation report (`amoe ablate`)
    own = ["report.runs_dir=runs", "report.out=runs/RESULTS.md"]
    results.append(tasks.run_stage("report", own + (overrides or []), params_file, use_dvc=use_dvc))
    return results


@flow(name="amoe-sweep", log_prints=True)
@_describe_overrides
def sweep_flow(overrides: list[str] | None = None, params_file: str | None = None) -> dict[str, Any]:
    """Optuna search over batching and loss settings (`amoe sweep`); the best trial is exported as overrides."""
    return tasks.run_stage("sweep", overrides, params_file, use_dvc=False)


FLOWS = (stage_flow, data_flow, curation_flow, distillation_flow, evaluation_flow, pipeline_flow, sweep_flow)
