"""Prefect tasks that run one pipeline stage, letting DVC decide whether it is up to date.

A stage declared in dvc.yaml runs as `dvc repro <stage>` when no parameter overrides are given, so an up-to-date
stage is skipped and dvc.lock stays the record of what produced each output. With overrides (a what-if run from the
UI) or without a dvc.yaml stage, the stage function is called directly with `load_params(params_file, overrides)`:
the same function the CLI, DVC and submitit call. Distillation goes through `amoe submit` (submitit: SLURM when
present) and, when DVC tracks it, its outputs are recorded afterwards with `dvc commit`.
Failures that a retry can fix (lost node, I/O hiccup, killed process) are retried; a user error (`AmoeError`: bad
params, missing input) is not, since it fails the same way every time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging.handlers import APILogHandler

from amoe_core.config import Params, load_params
from amoe_core.dvc_cli import DvcError, run_dvc
from amoe_core.errors import AmoeError
from amoe_core.launch.submit import submit_stage
from amoe_core.progress import setup_logging
from amoe_core.stages import stage_function
from flows import artifacts

DVC_FILE = Path("dvc.yaml")
RETRIES = 2
RETRY_DELAYS_S = [10, 60]


def transient(task, task_run, state) -> bool:  # noqa: ARG001 (Prefect's retry_condition_fn signature)
    """Retry anything except a user error; a failed `dvc` command is retried (a killed stage, a held lock)."""
    try:
        state.result()
    except DvcError:
        return True
    except AmoeError:
        return False
    except Exception:
        return True
    return False


def dvc_stages(dvc_file: Path = DVC_FILE) -> set[str]:
    """Stage names of dvc.yaml, as DVC itself resolves them (foreach/matrix entries `name@key` count as `name`)."""
    if not dvc_file.exists():
        return set()
    names = run_dvc("stage", "list", "--name-only").split()
    return {n.split("@", 1)[0] for n in names} | set(names)


def dvc_up_to_date(stage: str) -> bool:
    """True when `dvc status <stage>` reports nothing changed (deps, params and outs match dvc.lock)."""
    return json.loads(run_dvc("status", stage, "--json") or "{}") == {}


def use_dvc_for(stage: str, overrides: list[str], use_dvc: bool) -> bool:
    return use_dvc and not overrides and stage in dvc_stages()


AMOE_LOGGERS = ("amoe_core", "amoe")  # the stages' loggers (module loggers and the CLI's)


@contextmanager
def amoe_logs() -> Iterator[None]:
    """Send the stages' own log lines (progress, summaries, output paths) to the flow run's log in the UI."""
    setup_logging()
    handler = APILogHandler()
    loggers = [logging.getLogger(n) for n in AMOE_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(min(lg.level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def finish(stage: str, params: Params, overrides: list[str], out: dict[str, Any], kwargs: dict | None = None) -> dict:
    """End the task with its markdown artifact (key results, run directory, the command that reproduces it)."""
    text = artifacts.markdown(stage, params, overrides, out, kwargs)
    create_markdown_artifact(markdown=text, key=f"amoe-{stage}", description=f"amoe {stage}: results and how to rerun")
    return out


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=transient, task_run_name="{stage}")
def run_stage(
    stage: str,
    overrides: list[str] | None = None,
    params_file: str | None = None,
    kwargs: dict[str, Any] | None = None,
    use_dvc: bool = True,
) -> dict[str, Any]:
    """Run one stage of the registry: `dvc repro` when DVC tracks it (skips it when up to date), else directly."""
    log = get_run_logger()
    overrides = list(overrides or [])
    params = load_params(params_file, overrides)
    if use_dvc_for(stage, overrides, use_dvc) and not kwargs:
        if dvc_up_to_date(stage):
            log.info("%s: outputs up to date (dvc status), not recomputed", stage)
            return finish(stage, params, overrides, {"stage": stage, "ran": False, "via": "dvc"})
        out = run_dvc("repro", stage)
        log.info("%s: %s", stage, out.strip()[-2000:])
        return finish(stage, params, overrides, {"stage": stage, "ran": True, "via": "dvc"})
    log.info("%s: running `%s`", stage, artifacts.command(stage, overrides, kwargs))
    with amoe_logs():
        result = stage_function(stage)(params, **(kwargs or {}))
    log.info("%s: done", stage)
    return finish(
        stage, params, overrides, {"stage": stage, "ran": True, "via": "direct", "result": _plain(result)}, kwargs
    )


def submit(params: Params, stage: str) -> Any:
    """`amoe submit <stage>`: submitit on SLURM when a cluster answers, else a local process."""
    return submit_stage(params, stage, wait=True)


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=transient, task_run_name="distill")
def run_distill(overrides: list[str] | None = None, params_file: str | None = None, use_dvc: bool = True) -> dict:
    """Distillation through `amoe submit distill`, skipped when DVC says its outputs are up to date."""
    log = get_run_logger()
    overrides = list(overrides or [])
    params = load_params(params_file, overrides)
    tracked = use_dvc_for("distill", overrides, use_dvc)
    if tracked and dvc_up_to_date("distill"):
        log.info("distill: outputs up to date (dvc status), not recomputed")
        return finish("distill", params, overrides, {"stage": "distill", "ran": False, "via": "dvc"})
    run_dir = Path(params.distill.runs_dir, params.distill.run).resolve()
    log.info("distill: run %s -> %s (`amoe submit distill`)", params.distill.run, run_dir)
    with amoe_logs():
        result = submit(params, "distill")
    if tracked:
        run_dvc("commit", "--force", "distill")  # record the submitted run's outputs in dvc.lock
    log.info("distill: run %s finished", params.distill.run)
    out = {"stage": "distill", "ran": True, "via": "submit", "run": params.distill.run, "result": _plain(result)}
    return finish("distill", params, overrides, out)


def _plain(value: Any) -> Any:
    """A JSON-able version of a stage's return value (Prefect stores task results)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)[:1000]
