"""The Prefect flows: one per stage group, the full pipeline chaining them, the sweep, and any single stage.

Every flow takes `overrides` (DVC's `-S section.key=value` spelling) and `params_file`, so the Prefect UI can start
any of them with parameters. Stages run through `flows.tasks` (DVC decides what is up to date).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import tasks

CURATION = ("embed", "cluster", "sample")
DATA = ("demo-pool", "ingest", "teachers-demo")


@flow(name="amoe-stage", log_prints=True)
def stage_flow(
    stage: str, overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> dict[str, Any]:
    """Any single stage of amoe_core.stages by name (e.g. ingest, embed, evaluate, report)."""
    if stage == "distill":
        return tasks.run_distill(overrides, params_file, use_dvc)
    return tasks.run_stage(stage, overrides, params_file, use_dvc=use_dvc)


@flow(name="amoe-data", log_prints=True)
def data_flow(overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True) -> list[dict]:
    """Demo pool -> shards -> demo teachers."""
    return [tasks.run_stage(s, overrides, params_file, use_dvc=use_dvc) for s in DATA]


@flow(name="amoe-curation", log_prints=True)
def curation_flow(
    overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> list[dict]:
    """Embed the shard set, hierarchical k-means, balanced + random selections."""
    return [tasks.run_stage(s, overrides, params_file, use_dvc=use_dvc) for s in CURATION]


@flow(name="amoe-distillation", log_prints=True)
def distillation_flow(
    overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True
) -> dict[str, Any]:
    """Train the student through `amoe submit distill` (SLURM when a cluster answers)."""
    return tasks.run_distill(overrides, params_file, use_dvc)


@flow(name="amoe-evaluation", log_prints=True)
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
def sweep_flow(overrides: list[str] | None = None, params_file: str | None = None) -> dict[str, Any]:
    """Optuna search over batching and loss settings (`amoe sweep`); the best trial is exported as overrides."""
    return tasks.run_stage("sweep", overrides, params_file, use_dvc=False)


FLOWS = (stage_flow, data_flow, curation_flow, distillation_flow, evaluation_flow, pipeline_flow, sweep_flow)
