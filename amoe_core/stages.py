"""The registry of pipeline stages: one name -> one plain function `fn(params, **kwargs)`.

The CLI, `amoe submit` (submitit), the DVC stages, the Prefect tasks and the tests all call these same functions.
Imports are lazy so `amoe --help` does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

STAGES: dict[str, str] = {
    "demo-pool": "amoe_core.data.demo_pool:run",
    "ingest": "amoe_core.data.ingest:run",
    "teachers-demo": "amoe_core.models.teachers.demo:run",
    "embed": "amoe_core.curation.embed:run",
    "cluster": "amoe_core.curation.hkmeans:run",
    "sample": "amoe_core.curation.sampling:run",
    "distill": "amoe_core.train.distill:run",
    "evaluate": "amoe_core.eval.evaluate:run",
    "sweep": "amoe_core.sweep.search:run",
    "ablate": "amoe_core.experiments.ablations:run",
    "report": "amoe_core.eval.report:run",
}


def stage_function(name: str) -> Callable[..., Any]:
    if name not in STAGES:
        from amoe_core.errors import AmoeError

        raise AmoeError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)
