"""Read and write one run directory. Every writer is atomic or append-only, so a killed run leaves readable files.

Layout of `runs/<run_id>/`:
  params.yaml     the resolved params of the newest attempt (start or --resume): what produced the newest records
  params_history.yaml  every attempt's params, one YAML document each, headed by its number, time and start point
  dvclive/        the per-step curves (loss terms, lr, grad norm, tokens/s, expert load, ...): dvclive's files,
                  read through amoe_core/tracking/curves.py
  train.json      training summary computed from the curves: median throughput after warm-up, final losses (DVC
                  metrics; `amoe report` and `dvc exp show` read it)
  eval.json       evaluation results (DVC metrics)
  checkpoints/    safetensors weights + a small state file per checkpoint
  events.log      human-readable lifecycle events (start, resume, checkpoint, requeue, finish)
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from amoe_core.io import atomic_write_json, atomic_write_text
from amoe_core.tracking import curves
from amoe_core.tracking.eval_record import read_eval

TEACHERS_RUN = "_teachers"  # runs/_teachers/eval.json: `amoe evaluate --teachers`, the teachers' own baselines
# beside collected runs (`amoe ablate`): each experiment's commit and the baseline commit, i.e. the code it measured
PROVENANCE = "experiments.json"
CURATION_DIR = "_curation"  # beside collected runs: <experiment>.json, the curation report of its data
SWEEP_DIR = "_sweep"  # runs/_sweep/<study>/<trial>/: `amoe sweep` trials, kept out of list_runs (report, ablations)


MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()<>#!|~])")


def md_escape(text: str) -> str:
    """User-chosen text (run names, settings) shown as markdown: its markup characters escaped, so a run named
    `![p](https://...)` or `[x](javascript:...)` is shown as that text, never fetched or linked."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, runs_dir: str | Path, run_id: str) -> RunDir:
        run = cls(Path(runs_dir) / run_id)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        return run

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def params_file(self) -> Path:
        return self.path / "params.yaml"

    @property
    def live_dir(self) -> Path:
        return self.path / curves.LIVE_DIR

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.json"

    @property
    def train_file(self) -> Path:
        return self.path / "train.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def events_file(self) -> Path:
        return self.path / "events.log"

    def exists(self) -> bool:
        return self.params_file.exists()

    def has_records(self) -> bool:
        """Holds any of a run's records: what identifies a run written before output markers existed (`dvc repro`
        removes params.yaml and checkpoints/ first, leaving e.g. eval.json)."""
        files = (self.params_file, self.train_file, self.eval_file, self.events_file)
        return any(f.exists() for f in (*files, self.live_dir, self.checkpoints, self.history_file))

    @property
    def history_file(self) -> Path:
        return self.path / "params_history.yaml"

    # ---- writers
    def write_params(self, params_yaml: str) -> None:
        atomic_write_text(self.params_file, params_yaml)

    def record_attempt(self, params_yaml: str, start: str) -> int:
        """Make `params_yaml` the run's params.yaml and append it to the history; returns the attempt number."""
        n = 1
        if self.history_file.exists():
            n += sum(1 for _ in yaml.safe_load_all(self.history_file.read_text()))
        with open(self.history_file, "a", encoding="utf-8") as f:
            f.write(f"--- # attempt {n}, {time.strftime('%Y-%m-%dT%H:%M:%S')}, {start}\n{params_yaml}")
        self.write_params(params_yaml)
        return n

    def write_eval(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.eval_file, results)

    def write_train_summary(self) -> dict[str, Any]:
        summary = summarize_training(self.metrics())
        atomic_write_json(self.train_file, summary)
        return summary

    def event(self, message: str) -> None:
        with open(self.events_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    # ---- readers
    def params(self) -> dict[str, Any]:
        return yaml.safe_load(self.params_file.read_text()) if self.params_file.exists() else {}

    def metrics(self) -> list[dict[str, Any]]:
        """One record per logged step, each step once (a resumed attempt's values where it logged a step again)."""
        return curves.read_steps(self.path)

    def eval(self) -> dict[str, Any]:
        return read_eval(self.eval_file)  # a damaged file: one warning naming it, read as {}

    def train_summary(self) -> dict[str, Any]:
        """train.json, or the same summary computed from the curves (a run still training, or killed)."""
        if self.train_file.exists():
            return json.loads(self.train_file.read_text())
        return summarize_training(self.metrics())


def summarize_training(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median tokens/s and images/s over the steps after the first fifth (compile, caches and allocator warm-up),
    and the last step's losses."""
    if not records:
        return {}
    steady = records[len(records) // 5 :]
    out: dict[str, Any] = {"steps": int(records[-1]["step"])}
    for key in ("tokens_per_s", "images_per_s"):
        values = [r[key] for r in steady if isinstance(r.get(key), int | float)]
        if values:
            out[key] = float(statistics.median(values))
    out["loss"] = {k[5:]: v for k, v in records[-1].items() if k.startswith("loss/")}
    return out


def list_runs(runs_dir: str | Path) -> list[RunDir]:
    """All runs under `runs_dir` (directories holding a params.yaml), sorted by id."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return [RunDir(p.parent) for p in sorted(root.glob("*/params.yaml"))]


def student_runs(runs_dir: str | Path, include_sweeps: bool = False) -> list[RunDir]:
    """Student runs: run directories with a params.yaml, skipping internal ones (`_teachers`, `_submitit`); with
    `include_sweeps`, also the Optuna trials under `_sweep/<study>/`."""
    runs = [r for r in list_runs(runs_dir) if not r.id.startswith("_")]
    return runs + (sweep_runs(runs_dir) if include_sweeps else [])


def sweep_runs(runs_dir: str | Path, study: str | None = None) -> list[RunDir]:
    """Trial runs of `amoe sweep` (runs_dir/_sweep/<study>/<trial>), of one study or all, sorted by path."""
    root = Path(runs_dir) / SWEEP_DIR
    pattern = f"{study}/*/params.yaml" if study else "*/*/params.yaml"
    return [RunDir(p.parent) for p in sorted(root.glob(pattern))] if root.is_dir() else []


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> {"a.b.0.c": value} (DVC's `-S` spelling)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}
