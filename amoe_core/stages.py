"""The registry of pipeline stages: one name -> one plain function `fn(params, **kwargs)`.

The CLI, `amoe submit` (submitit), the DVC stages, the Prefect tasks and the tests all call these same functions.
Stage modules are imported by name when a stage runs, so `amoe --help` does not import torch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from typing import Any

from amoe_core.errors import AmoeError
from amoe_core.outputs import output_lock

STAGES: dict[str, str] = {
    "demo-pool": "amoe_core.data.demo_pool:run",
    "ingest": "amoe_core.data.ingest:run",
    "teachers-demo": "amoe_core.train.demo_teachers.stage:run",
    "teachers-cache": "amoe_core.train.teacher_cache:run",
    "embed": "amoe_core.curation.embed:run",
    "cluster": "amoe_core.curation.hkmeans:run",
    "sample": "amoe_core.curation.sampling:run",
    "distill": "amoe_core.train.distill:run",
    "evaluate": "amoe_core.eval.evaluate:run",
    "sweep": "amoe_core.sweep.search:run",
    "ablate": "amoe_core.experiments.ablations:run",
    "report": "amoe_core.experiments.report:run",
}


# Output directories named by a params field, guarded and locked for the whole stage (amoe_core/outputs.py). Stages
# whose outputs depend on arguments (ingest --out, distill's run, export --out) claim them themselves.
LOCKED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "demo-pool": ("demo_pool.out",),
    "teachers-demo": ("demo_teachers.out",),
    "embed": ("embed.out",),
    "cluster": ("cluster.out",),
    "sample": ("sample.out", "sample.plots"),
    "ablate": ("ablate.out",),
}


def stage_function(name: str) -> Callable[..., Any]:
    if name not in STAGES:
        raise AmoeError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, fn = STAGES[name].split(":")
    stage = getattr(importlib.import_module(module), fn)
    if name not in LOCKED_OUTPUTS:
        return stage

    @functools.wraps(stage)
    def locked(params: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for field in LOCKED_OUTPUTS[name]:
                section, key = field.split(".")
                stack.enter_context(output_lock(field, getattr(getattr(params, section), key)))
            return stage(params, **kwargs)

    return locked
