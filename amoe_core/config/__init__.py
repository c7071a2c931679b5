"""Typed models of params.yaml, one module per section, validated before any work starts.

A stage's code imports only its own section's module (`amoe_core.config.distill`, ...), so that a DVC stage's code
deps name that module and editing another stage's schema does not rerun it. The shared parts: `section` (the strict
base, `dump_params`), `params` (`Params`, the checks that span sections, error lines), `load` (params.yaml and `-S`
overrides). `from amoe_core.config import Params, load_params, ...` still works for every public name: PUBLIC below
says where each lives, and a name is imported on first use (PEP 562), so that importing one section's module, which
initialises this package, does not import every other section. tests/_import_graph.py reads PUBLIC to resolve such
imports to the module that defines the name.
"""

from __future__ import annotations

import importlib
from typing import Any

PUBLIC: dict[str, str] = {
    "AblateConfig": "amoe_core.config.ablate",
    "Byte": "amoe_core.config.section",
    "ClusterConfig": "amoe_core.config.cluster",
    "ConfigError": "amoe_core.errors",
    "DEFAULT_PARAMS": "amoe_core.config.load",
    "DemoPoolConfig": "amoe_core.config.demo_pool",
    "DemoTeacherConfig": "amoe_core.config.demo_teachers",
    "DemoTeachersConfig": "amoe_core.config.demo_teachers",
    "DistillConfig": "amoe_core.config.distill",
    "EmbedConfig": "amoe_core.config.embed",
    "EvalDataset": "amoe_core.config.evaluate",
    "EvaluateConfig": "amoe_core.config.evaluate",
    "IngestConfig": "amoe_core.config.ingest",
    "LaunchConfig": "amoe_core.config.launch",
    "LossConfig": "amoe_core.config.loss",
    "PackingConfig": "amoe_core.config.packing",
    "Params": "amoe_core.config.params",
    "ReportConfig": "amoe_core.config.report",
    "SampleConfig": "amoe_core.config.sample",
    "Section": "amoe_core.config.section",
    "StudentConfig": "amoe_core.config.student",
    "SweepConfig": "amoe_core.config.sweep",
    "TeacherSpec": "amoe_core.config.teachers",
    "apply_override": "amoe_core.config.load",
    "dump_params": "amoe_core.config.section",
    "load_params": "amoe_core.config.load",
    "validate_params": "amoe_core.config.params",
}

__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(PUBLIC[name]), name)


def __dir__() -> list[str]:
    return __all__
