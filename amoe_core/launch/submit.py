"""`amoe submit STAGE`: run any pipeline stage through submitit, with preemption -> checkpoint -> requeue.

The submitted callable is a `submitit.helpers.Checkpointable`: when SLURM signals a timeout or a preemption, submitit
calls its `checkpoint()` on rank 0, which lets the running stage write a checkpoint (when it is between steps) and
returns a resubmission of the same stage with `resume=True`; submitit then requeues the job and the new allocation
resumes from the run's last checkpoint. A job requeued from outside (`scontrol requeue`, node failure) resumes too:
SLURM_RESTART_COUNT > 0 means the run was started before. `--array key=v1,v2` submits one job per value
(`executor.map_array`), e.g. seeds or sweep points.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import re
from typing import Any

import submitit

from amoe_core.config.params import Params, validate_params
from amoe_core.errors import AmoeError
from amoe_core.launch import distributed
from amoe_core.launch.executors import make_executor
from amoe_core.overrides import with_overrides
from amoe_core.stages import stage_function

log = logging.getLogger(__name__)


class StageJob(submitit.helpers.Checkpointable):
    """One stage run as a submitit job; params travel as plain JSON-able data (one job, or one array element)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def __call__(self, params: dict[str, Any], resume: bool = False) -> Any:
        validated = validate_params(params)
        info = distributed.init_distributed()
        fn = stage_function(self.stage)
        kwargs: dict[str, Any] = {}
        restarted = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
        if (resume or restarted) and "resume" in inspect.signature(fn).parameters:
            kwargs["resume"] = True
        log.info("stage %s rank %d/%d resume=%s", self.stage, info.rank, info.world_size, kwargs.get("resume", False))
        try:
            return fn(validated, **kwargs)
        finally:
            distributed.cleanup_distributed()

    def checkpoint(self, params: dict[str, Any], resume: bool = False) -> submitit.helpers.DelayedSubmission:
        distributed.run_preemption_hooks()  # e.g. the trainer saves a checkpoint if it is between two steps
        return submitit.helpers.DelayedSubmission(StageJob(self.stage), params, resume=True)


def parse_array(array: list[str] | None) -> list[list[str]]:
    """`["seed=0,1", "distill.lr=1e-3,3e-3"]` -> the override lists of the cartesian product (one job each)."""
    if not array:
        return [[]]
    axes: list[list[str]] = []
    for spec in array:
        if "=" not in spec or not spec.split("=", 1)[1]:
            raise AmoeError(f"--array {spec!r} must look like key=v1,v2,... (e.g. seed=0,1,2)")
        key, values = spec.split("=", 1)
        axes.append([f"{key.strip()}={v.strip()}" for v in values.split(",") if v.strip()])
    return [list(combo) for combo in itertools.product(*axes)]


def _run_suffix(overrides: list[str]) -> str:
    parts = [o.split("=", 1)[0].split(".")[-1] + o.split("=", 1)[1] for o in overrides]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts))


def params_for(params: Params, overrides: list[str]) -> Params:
    """`params` with one array element's overrides; each element of an array gets its own distill run."""
    if overrides and not any(o.startswith("distill.run=") for o in overrides):
        # JSON quoting: the name reads back as this exact string (YAML would turn e.g. 2024-01-01 into a date)
        overrides = [*overrides, f"distill.run={json.dumps(f'{params.distill.run}-{_run_suffix(overrides)}')}"]
    return with_overrides(params, overrides)


def submit_stage(params: Params, stage: str, wait: bool = True, array: list[str] | None = None) -> list[submitit.Job]:
    """Submit `stage` (one job, or one per array element); when `wait`, block and raise on failure."""
    stage_function(stage)  # unknown stage -> AmoeError before anything is submitted
    elements = [params_for(params, o) for o in parse_array(array)]
    executor = make_executor(params.launch, name=f"amoe-{stage}")
    job_fn = StageJob(stage)
    trees = [p.model_dump(mode="json") for p in elements]
    jobs = [executor.submit(job_fn, trees[0])] if len(trees) == 1 else executor.map_array(job_fn, trees)
    for job, p in zip(jobs, elements):
        print(f"submitted {stage} job {job.job_id} ({executor.cluster}) run={p.distill.run}")
    if wait:
        for job in jobs:
            try:
                job.results()
            except submitit.core.utils.FailedJobError as e:
                last = str(e).strip().splitlines()[-1] if str(e).strip() else "no traceback"
                raise AmoeError(f"{stage} job {job.job_id} failed ({last}); full log: {job.paths.stderr}") from None
            print(f"{stage} job {job.job_id}: {job.state}")
    return jobs
