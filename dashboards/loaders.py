"""Read what the stages wrote (runs/, the curation report, the Optuna storage) into pandas frames for the dashboard.

Pure functions with no Streamlit import, so they are testable on their own; `app.py` caches them on file mtimes.
Nothing here recomputes a result: every number comes from a file a stage wrote (params.yaml, the dvclive curves,
train.json, eval.json, report.json, the Optuna storage), and runs are grouped into variants and summarised by the
same `amoe_core.tracking` code that `amoe report` uses.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from amoe_core.experiments.findings import Effect
from amoe_core.tracking import curves, eval_record
from amoe_core.tracking.runs import SWEEP_DIR, TEACHERS_RUN, RunDir, flatten, student_runs
from amoe_core.tracking.variants import (
    HEADLINE_K,
    Variant,
    conditions,
    differing_keys,
    eval_values,
    group_variants,
    headline,
    knn_avg_per_seed,
    lookup,
    mean_std,
    run_seed,
    train_values,
    variant_order,
)


# ---------------------------------------------------------------------------------------------------------- runs
def run_name(run: RunDir, runs_dir: str | Path) -> str:
    """The run's path under `runs_dir` ("ref-s0-balanced", "_sweep/amoe-sweep/t0003"): unique, unlike the id."""
    return run.path.relative_to(runs_dir).as_posix()


def fingerprint(paths: Iterable[str | Path]) -> tuple[tuple[str, float], ...]:
    """(path, mtime) pairs: a cache key that changes exactly when one of the files changes."""
    out = []
    for p in paths:
        try:
            out.append((str(p), os.stat(p).st_mtime_ns / 1e9))
        except OSError:
            out.append((str(p), -1.0))
    return tuple(out)


def runs_fingerprint(runs_dir: str | Path, include_sweeps: bool = False) -> tuple[tuple[str, float], ...]:
    files: list[Path] = []
    for r in student_runs(runs_dir, include_sweeps) + [RunDir(Path(runs_dir) / TEACHERS_RUN)]:
        files += [r.params_file, curves.summary_file(r.path), r.train_file, r.eval_file]
    return fingerprint(files)


def variant_labels(runs: list[RunDir], runs_dir: str | Path) -> dict[str, str]:
    """Run name -> its variant's label (the report's grouping); a sweep trial is its own variant, named by trial."""
    trials = [r for r in runs if SWEEP_DIR in r.path.relative_to(runs_dir).parts[:1]]
    plain = [r for r in runs if r not in trials]
    labels = {run_name(r, runs_dir): v.label for v in group_variants(plain) for r in v.runs}
    labels.update({run_name(r, runs_dir): "sweep " + run_name(r, runs_dir).split("/", 1)[1] for r in trials})
    return labels


def _knn_column(dataset: str, feat: str, res: str) -> str:
    return f"kNN {dataset} % ({feat.split(':', 1)[1]}, {res}, {HEADLINE_K})"


def runs_table(runs: list[RunDir], runs_dir: str | Path) -> pd.DataFrame:
    """One row per run: variant, seed, the training summary (train.json), headline kNN in % per dataset, then every
    condition param that differs between the runs (identity keys and other commands' sections left out)."""
    if not runs:
        return pd.DataFrame(columns=["run", "variant"])
    labels = variant_labels(runs, runs_dir)
    datasets, feat, res = headline(runs)
    conds = {run_name(r, runs_dir): conditions(r) for r in runs}
    keys = differing_keys(conds.values())
    rows = []
    for r in runs:
        name = run_name(r, runs_dir)
        summary = r.train_summary()
        row: dict[str, Any] = {"run": name, "variant": labels[name], "seed": run_seed(r)}
        row["steps"] = summary.get("steps")
        row["loss/total (last)"] = _rounded(lookup(summary, "loss", "total"), 3)
        tps = summary.get("tokens_per_s")
        row["tokens/s (median)"] = f"{tps:,.0f}" if isinstance(tps, int | float) else None
        for d in datasets:
            acc = lookup(r.eval(), "knn", d, feat, res, HEADLINE_K) if feat and res else None
            row[_knn_column(d, feat, res)] = _rounded(100 * acc if isinstance(acc, int | float) else None, 1)
        for k in keys:
            v = flatten(r.params()).get(k)
            row[k] = json.dumps(v) if isinstance(v, list | dict) else v
        rows.append(row)
    return pd.DataFrame(rows)


def _rounded(x: float | None, digits: int) -> float | None:
    return round(float(x), digits) if x is not None else None


def variants_table(runs: list[RunDir], runs_dir: str | Path) -> pd.DataFrame:
    """One row per variant: its seeds and runs, then mean ± std over seeds of the numbers `amoe report` shows."""
    if not runs:
        return pd.DataFrame(columns=["variant"])
    datasets, feat, res = headline(runs)
    labels = variant_labels(runs, runs_dir)
    by_label: dict[str, Variant] = {}
    for r in runs:
        label = labels[run_name(r, runs_dir)]
        by_label.setdefault(label, Variant(label=label, settings={})).runs.append(r)
    rows = []
    for label in variant_order(by_label):
        v = by_label[label]
        row: dict[str, Any] = {"variant": label, "seeds": ", ".join(map(str, v.seeds)), "runs": len(v.runs)}
        row["steps"] = mean_std(train_values(v, "steps"), scale=1, digits=0)
        row["loss/total (last)"] = mean_std(train_values(v, "loss", "total"), scale=1, digits=3)
        row["tokens/s"] = thousands(train_values(v, "tokens_per_s"))
        if feat and res:
            for d in datasets:
                row[_knn_column(d, feat, res)] = mean_std(eval_values(v, "knn", d, feat, res, HEADLINE_K))
            avgs = knn_avg_per_seed(v, datasets, res, HEADLINE_K, feat)
            row[f"kNN avg % ({res}, {HEADLINE_K})"] = mean_std(avgs)
            ref = (
                knn_avg_per_seed(by_label["reference"], datasets, res, HEADLINE_K, feat)
                if "reference" in by_label
                else []
            )
            row[DIFF_COLUMN] = difference(avgs, ref) if label != "reference" else ""
        rows.append(row)
    df = pd.DataFrame(rows)
    first = ["variant", *(c for c in df.columns if c.startswith("kNN avg")), *([DIFF_COLUMN] * (DIFF_COLUMN in df))]
    return df[first + [c for c in df.columns if c not in first]]  # the headline and the effect first, on screen


DIFF_COLUMN = "Δ kNN avg vs reference (± s.e.)"


def difference(ours: list[float], reference: list[float]) -> str:
    """Variant minus reference in kNN points with the standard error of that difference over seeds (Welch, as the
    report's findings compute it: findings.Effect), e.g. "+0.2 ± 0.7"; "-" without numbers on either side."""
    if not ours or not reference:
        return "-"
    effect = Effect.of(ours, reference)
    return f"{effect.diff:+.1f} ± {effect.se:.1f}" if effect.se else f"{effect.diff:+.1f} (one seed: no s.e.)"


def thousands(values: list[float]) -> str:
    """mean ± std of a throughput with thousands separators ("2,246 ± 31"), the mean alone for one run."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.fmean(values):,.0f} ± {statistics.stdev(values):,.0f}"


def mean_std_table(
    df: pd.DataFrame, index: list[str], columns: str, value: str = "accuracy", scale: float = 100, digits: int = 1
) -> pd.DataFrame:
    """Pivot of "mean ± std" over the runs in each cell (accuracies in %), formatted like `amoe report`."""
    if df.empty:
        return pd.DataFrame(columns=index)
    cells = df.groupby([*index, columns], sort=False)[value].apply(
        lambda x: mean_std([float(v) for v in x], scale, digits)
    )
    table = cells.unstack(columns)
    table.columns = [str(c) for c in table.columns]
    table = table.reset_index()
    if "variant" in index:  # the report's order: the reference first
        rank = {v: i for i, v in enumerate(variant_order(table.variant))}
        table = table.sort_values("variant", key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)
    return table


# ---------------------------------------------------------------------------------------------------------- curves
def loss_curves(run: RunDir, name: str) -> pd.DataFrame:
    """Long frame (run, step, term, value) of every `loss/...` curve of the run (its dvclive files)."""
    rows = [
        {"run": name, "step": m["step"], "term": k.removeprefix("loss/"), "value": float(v)}
        for m in run.metrics()
        if "step" in m
        for k, v in m.items()
        if k.startswith("loss/") and isinstance(v, int | float)
    ]
    return pd.DataFrame(rows, columns=["run", "step", "term", "value"])


def expert_load(run: RunDir, name: str) -> pd.DataFrame:
    """The last logged expert load as a long frame (run, layer, expert, load): fraction of routed token slots."""
    last = next((m["expert_load"] for m in reversed(run.metrics()) if m.get("expert_load")), None)
    if last is None:
        return pd.DataFrame(columns=["run", "layer", "expert", "load"])
    rows = [
        {"run": name, "layer": layer, "expert": e, "load": float(x)}
        for layer, loads in enumerate(last)
        for e, x in enumerate(loads)
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------- eval
def knn_rows(run_id: str, ev: dict[str, Any]) -> pd.DataFrame:
    """eval.json's kNN block as rows (run, dataset, feature, resolution, k, accuracy)."""
    out = [
        {"run": run_id, **_where(r), "k": int(r["metric"][1:]), "accuracy": r["value"]}
        for r in eval_record.rows(ev, eval_record.KNN)
        if r["metric"][:1] == "k" and r["metric"][1:].isdigit()
    ]
    return pd.DataFrame(out, columns=["run", "dataset", "feature", "resolution", "k", "accuracy"])


def _where(row: dict[str, Any]) -> dict[str, Any]:
    return {c: row[c] for c in ("dataset", "feature", "resolution")}


def linear_rows(run_id: str, ev: dict[str, Any]) -> pd.DataFrame:
    out = [{"run": run_id, **_where(r), "accuracy": r["value"]} for r in eval_record.rows(ev, eval_record.LINEAR)]
    return pd.DataFrame(out, columns=["run", "dataset", "feature", "resolution", "accuracy"])


def result_rows(run_id: str, ev: dict[str, Any]) -> pd.DataFrame:
    """eval.json's zero-shot and segmentation sections as rows (run, section, dataset, feature, resolution, metric,
    value): metric is "top1" for zero-shot, "miou" / "pixel_acc" for segmentation."""
    out = [
        {"run": run_id, "section": section, **_where(r), "metric": r["metric"], "value": r["value"]}
        for section in (eval_record.ZERO_SHOT, eval_record.SEGMENTATION)
        for r in eval_record.rows(ev, section)
    ]
    return pd.DataFrame(out, columns=["run", "section", "dataset", "feature", "resolution", "metric", "value"])


def fidelity_rows(run_id: str, ev: dict[str, Any]) -> pd.DataFrame:
    rows = [{"run": run_id, "teacher": t, **vals} for t, vals in (ev.get("fidelity") or {}).items()]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run", "teacher"])


def teacher_vs_student(student: pd.DataFrame, teachers: pd.DataFrame) -> pd.DataFrame:
    """Pair each `student:<t>` row with the teacher baseline `teacher:<t>` on the same dataset/resolution/k."""
    s = student[student.feature.str.startswith("student:")].copy()
    s["teacher"] = s.feature.str.split(":", n=1).str[1]
    t = teachers[teachers.feature.str.startswith("teacher:")].copy()
    t["teacher"] = t.feature.str.split(":", n=1).str[1]
    keys = ["dataset", "teacher", "resolution", "k"]
    merged = s.merge(t[keys + ["accuracy"]], on=keys, suffixes=("_student", "_teacher"))
    merged["delta"] = merged.accuracy_student - merged.accuracy_teacher
    return merged[["run", *keys, "accuracy_student", "accuracy_teacher", "delta"]].reset_index(drop=True)
