"""The markdown artifact that ends every stage's task run: what it produced, where, and how to reproduce it.

Numbers are read from the files the stage wrote (train.json, eval.json, the report), through the same tracking code
the dashboard and `amoe report` use, so the Prefect UI, the dashboard and docs/RESULTS.md agree.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from amoe_core.config import Params
from amoe_core.experiments.findings import HEADING as FINDINGS_HEADING
from amoe_core.tracking.eval_record import HEADLINE_FEATURE, HEADLINE_K, KNN, SEGMENTATION, ZERO_SHOT, lookup, value
from amoe_core.tracking.eval_record import rows as rows_of
from amoe_core.tracking.runs import TEACHERS_RUN, RunDir

# stage -> the `amoe` command that runs it by hand (amoe_core/cli.py), and what it does (the flows' `stage` choices;
# markdown: a path with <placeholders> goes in backticks, or the UI renders it as an HTML tag and drops it)
STAGES: dict[str, tuple[str, str]] = {
    "demo-pool": ("amoe data demo-pool", "real images from Debian packages -> data/demo/{pool,splits}"),
    "ingest": ("amoe data ingest", "image sources -> validated, deduplicated WebDataset shards + manifest"),
    "teachers-demo": ("amoe teachers demo", "train the two small demo teachers (DINOv3, SigLIP2)"),
    "teachers-cache": (
        "amoe teachers cache",
        "the teachers' outputs on the run's packed batches, once -> `distill.teacher_cache` (distill and sweeps read it)",
    ),
    "embed": ("amoe curate embed", "embed every image of the shard set"),
    "cluster": ("amoe curate cluster", "hierarchical k-means over the embeddings"),
    "sample": ("amoe curate sample", "balanced hierarchical selection and a random baseline"),
    "distill": ("amoe distill", "train the MoE student from the teachers -> `runs/<run>/`"),
    "evaluate": ("amoe evaluate", "kNN, linear probe, resolutions, fidelity, PCA maps -> `runs/<run>/eval.json`"),
    "sweep": ("amoe sweep", "Optuna search over batching and loss settings"),
    "ablate": ("amoe ablate", "the paper's ablations as DVC experiments -> results/ablations"),
    "report": ("amoe report", "docs/RESULTS.md from the evaluated runs"),
}


def _section(report: Path, heading: str) -> list[str]:
    """One `## ` section of a markdown report (heading included), or nothing when the report or section is absent."""
    if not report.is_file():
        return []
    lines = report.read_text(errors="replace").splitlines()
    if heading not in lines:
        return []
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if not line.startswith("![")]  # images are files beside the report


def command(stage: str, overrides: list[str], kwargs: dict[str, Any] | None = None) -> str:
    """The shell command that repeats this stage with these overrides."""
    base = STAGES.get(stage, (f"amoe {stage}", ""))[0]
    args = shlex.split(base)
    kwargs = kwargs or {}
    if stage == "evaluate":
        args += ["--teachers"] if kwargs.get("teachers") else [kwargs["run"]] if kwargs.get("run") else []
    for o in overrides:
        args += ["-S", o]
    return shlex.join(args)


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _knn_rows(ev: dict[str, Any], params: Params, features: list[str]) -> list[tuple[str, str]]:
    res = f"{params.evaluate.main_resolution}px"
    rows = []
    for dataset in sorted(ev.get(KNN) or {}):
        for feat in features:
            acc = value(ev, "knn", dataset, feat, res, HEADLINE_K)
            if acc is not None:
                rows.append((f"kNN {dataset}, {feat} ({res}, {HEADLINE_K})", f"{100 * acc:.1f}%"))
    return rows


def _dense_rows(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """Zero-shot top-1 and segmentation mIoU / pixel accuracy, every feature and resolution they ran at."""
    rows = []
    for section, label in ((ZERO_SHOT, "zero-shot"), (SEGMENTATION, "segmentation")):
        for r in rows_of(ev, section):
            what = label if section == ZERO_SHOT else f"{label} {r['metric']}"
            rows.append((f"{what} {r['dataset']}, {r['feature']} ({r['resolution']}px)", f"{100 * r['value']:.1f}%"))
    return rows


def _run_rows(run: RunDir, params: Params, teachers: bool = False) -> list[tuple[str, str]]:
    rows = [("run directory", f"`{run.path.resolve()}`")]
    summary = run.train_summary() if run.params_file.exists() else {}
    if summary:
        rows += [("steps", str(summary.get("steps")))]
        if isinstance(lookup(summary, "loss", "total"), int | float):
            rows.append(("final loss", f"{summary['loss']['total']:.4f}"))
        if isinstance(summary.get("tokens_per_s"), int | float):
            rows.append(("tokens/s (median after warm-up)", f"{summary['tokens_per_s']:,.0f}"))
    ev = run.eval()
    if ev:
        knn = ev.get(KNN) or {}
        feats = sorted({f for by_f in knn.values() for f in by_f if f.startswith("teacher:")}) if teachers else []
        rows += _knn_rows(ev, params, feats or [HEADLINE_FEATURE])
        rows += _dense_rows(ev)
    return rows


def markdown(
    stage: str, params: Params, overrides: list[str], result: dict[str, Any], kwargs: dict[str, Any] | None = None
) -> str:
    """Key results, where they are, and the command that reproduces them."""
    kwargs = kwargs or {}
    findings: list[str] = []
    rows: list[tuple[str, str]] = [("ran", "yes" if result.get("ran") else "no: outputs up to date (dvc status)")]
    rows.append(("via", str(result.get("via"))))
    runs_dir = Path(params.distill.runs_dir)
    if stage == "distill":
        rows += _run_rows(RunDir(runs_dir / params.distill.run), params)
    elif stage == "evaluate":
        teachers = bool(kwargs.get("teachers"))
        name = TEACHERS_RUN if teachers else kwargs.get("run") or params.distill.run
        rows += _run_rows(RunDir(runs_dir / name), params, teachers)
    elif stage == "report":
        rows += [("report", f"`{Path(params.report.out).resolve()}`"), ("runs", f"`{params.report.runs_dir}`")]
        findings = _section(Path(params.report.out), FINDINGS_HEADING)
    elif stage == "sweep" and isinstance(result.get("result"), dict):
        best = result["result"]
        rows += [("best trial", str(best.get("best_trial"))), ("best value", f"{best.get('best_value')}")]
        rows += [("best overrides", f"`{params.sweep.best_out}`")]
    lines = [f"# amoe {stage}", "", STAGES.get(stage, ("", ""))[1], "", *_table(rows), ""]
    if stage == "report" and findings:
        lines += [*findings, ""]
    lines += ["Reproduce:", "", "```bash"]
    lines.append(command(stage, overrides, kwargs))
    if result.get("via") == "dvc":
        lines.append(f"dvc repro {stage}  # the same, through the pipeline (skipped when up to date)")
    elif overrides:
        lines.append("dvc exp run " + " ".join(f"-S {shlex.quote(o)}" for o in overrides) + "  # as a DVC experiment")
    lines += ["```", ""]
    return "\n".join(lines)
