"""Read what the stages wrote (runs/, the curation report, the Optuna storage) into pandas frames for the dashboard.

Pure functions with no Streamlit import, so they are testable on their own; `app.py` caches them on file mtimes.
Nothing here recomputes a result: every number comes from a file a stage wrote (params.yaml, metrics.jsonl,
eval.json, report.json, the Optuna storage).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from amoe_core.tracking.runs import RunDir, flatten, list_runs

MAIN_K = "k20"  # the DINO protocol's k (k=20, T=0.07) is the headline kNN number


# ---------------------------------------------------------------------------------------------------------- runs
def student_runs(runs_dir: str | Path) -> list[RunDir]:
    """Student runs: run directories with a params.yaml, skipping internal ones (`_teachers`, `_submitit`)."""
    return [r for r in list_runs(runs_dir) if not r.id.startswith("_")]


def fingerprint(paths: Iterable[str | Path]) -> tuple[tuple[str, float], ...]:
    """(path, mtime) pairs: a cache key that changes exactly when one of the files changes."""
    out = []
    for p in paths:
        try:
            out.append((str(p), os.stat(p).st_mtime_ns / 1e9))
        except OSError:
            out.append((str(p), -1.0))
    return tuple(out)


def runs_fingerprint(runs_dir: str | Path) -> tuple[tuple[str, float], ...]:
    files: list[Path] = []
    for r in list_runs(runs_dir):
        files += [r.params_file, r.metrics_file, r.eval_file]
    return fingerprint(files)


def differing_params(params_by_run: dict[str, dict[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every run (a key missing from a run counts as different)."""
    flat = {run: flatten(p) for run, p in params_by_run.items()}
    keys = sorted(set().union(*[set(f) for f in flat.values()])) if flat else []
    return [k for k in keys if len({json.dumps(f.get(k, "<missing>"), default=str) for f in flat.values()}) > 1]


def main_resolution(params: dict[str, Any], available: Iterable[str]) -> str | None:
    """The "<res>px" key closest to the run's evaluate.main_resolution (64 when the run does not say)."""
    avail = [a for a in available if a.endswith("px") and a[:-2].isdigit()]
    if not avail:
        return None
    want = int((params.get("evaluate") or {}).get("main_resolution", 64))
    return min(avail, key=lambda a: (abs(int(a[:-2]) - want), int(a[:-2])))


def headline_feature(features: Iterable[str]) -> str | None:
    """The student feature a runs table shows: the ensemble when evaluated, else the first student feature."""
    feats = sorted(features)
    if "student:ensemble" in feats:
        return "student:ensemble"
    student = [f for f in feats if f.startswith("student:")]
    return student[0] if student else (feats[0] if feats else None)


def run_summary(run: RunDir) -> dict[str, Any]:
    """Key numbers of one run: steps done, last total loss, median throughput, headline kNN per dataset."""
    metrics = run.metrics()
    params = run.params()
    row: dict[str, Any] = {"run": run.id}
    steps = [m["step"] for m in metrics if "step" in m]
    row["steps"] = max(steps) if steps else None
    losses = [m["loss/total"] for m in metrics if "loss/total" in m]
    row["loss/total (last)"] = losses[-1] if losses else None
    tps = sorted(m["tokens_per_s"] for m in metrics if "tokens_per_s" in m)
    row["tokens/s (median)"] = tps[len(tps) // 2] if tps else None
    for dataset, by_feature in sorted((run.eval().get("knn") or {}).items()):
        feat = headline_feature(by_feature)
        if feat is None:
            continue
        res = main_resolution(params, by_feature[feat])
        if res is not None:
            row[f"kNN {dataset} ({feat.split(':', 1)[1]}, {res}, {MAIN_K})"] = by_feature[feat][res].get(MAIN_K)
    return row


def runs_table(runs: list[RunDir]) -> pd.DataFrame:
    """One row per run: the key metrics, then every parameter whose value differs between the runs."""
    if not runs:
        return pd.DataFrame(columns=["run"])
    params = {r.id: r.params() for r in runs}
    keys = differing_params(params)
    rows = []
    for r in runs:
        row = run_summary(r)
        flat = flatten(params[r.id])
        for k in keys:
            v = flat.get(k)
            row[k] = json.dumps(v) if isinstance(v, list | dict) else v
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------- curves
def loss_curves(run: RunDir) -> pd.DataFrame:
    """Long frame (run, step, term, value) of every `loss/...` scalar in metrics.jsonl."""
    rows = [
        {"run": run.id, "step": m["step"], "term": k.removeprefix("loss/"), "value": float(v)}
        for m in run.metrics()
        if "step" in m
        for k, v in m.items()
        if k.startswith("loss/") and isinstance(v, int | float)
    ]
    return pd.DataFrame(rows, columns=["run", "step", "term", "value"])


def expert_load(run: RunDir) -> pd.DataFrame:
    """The last logged expert load as a long frame (run, layer, expert, load): fraction of routed token slots."""
    last = next((m["expert_load"] for m in reversed(run.metrics()) if m.get("expert_load")), None)
    if last is None:
        return pd.DataFrame(columns=["run", "layer", "expert", "load"])
    rows = [
        {"run": run.id, "layer": layer, "expert": e, "load": float(x)}
        for layer, loads in enumerate(last)
        for e, x in enumerate(loads)
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------- eval
def knn_rows(run_id: str, ev: dict[str, Any]) -> pd.DataFrame:
    """eval.json's kNN block as rows (run, dataset, feature, resolution, k, accuracy)."""
    rows = [
        {"run": run_id, "dataset": ds, "feature": feat, "resolution": int(res[:-2]), "k": int(k[1:]), "accuracy": acc}
        for ds, by_feat in (ev.get("knn") or {}).items()
        for feat, by_res in by_feat.items()
        for res, by_k in by_res.items()
        for k, acc in by_k.items()
    ]
    return pd.DataFrame(rows, columns=["run", "dataset", "feature", "resolution", "k", "accuracy"])


def linear_rows(run_id: str, ev: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {"run": run_id, "dataset": ds, "feature": feat, "resolution": int(res[:-2]), "accuracy": acc}
        for ds, by_feat in (ev.get("linear") or {}).items()
        for feat, by_res in by_feat.items()
        for res, acc in by_res.items()
    ]
    return pd.DataFrame(rows, columns=["run", "dataset", "feature", "resolution", "accuracy"])


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


# ---------------------------------------------------------------------------------------------------------- sweep
def sqlite_file(storage: str) -> Path | None:
    """The database file of a `sqlite:///path` URL (None for other RDB URLs)."""
    return Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None


def storage_available(storage: str) -> bool:
    """False for a SQLite file that does not exist: opening it would create an empty database as a side effect."""
    f = sqlite_file(storage)
    return bool(storage) and (f is None or f.exists())


def study_names(storage: str) -> list[str]:
    import optuna

    if not storage_available(storage):
        return []
    return sorted(optuna.study.get_all_study_names(storage=storage))


def sweep_trials(storage: str, study: str) -> pd.DataFrame:
    """Every trial of a study: number, state, value, best value so far, and its parameters (columns params_*)."""
    import optuna

    df = optuna.load_study(study_name=study, storage=storage).trials_dataframe(
        attrs=("number", "value", "state", "params", "duration")
    )
    if df.empty:
        return df
    df["state"] = df["state"].astype(str)
    done = df["value"].where(df["state"] == "COMPLETE")
    df["best so far"] = done.cummax()  # the objective (kNN accuracy) is maximised
    return df


def param_importance(storage: str, study: str) -> pd.DataFrame:
    """Optuna's fANOVA parameter importances (needs at least two finished trials with varying parameters)."""
    import optuna

    s = optuna.load_study(study_name=study, storage=storage)
    complete = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return pd.DataFrame(columns=["parameter", "importance"])
    try:
        imp = optuna.importance.get_param_importances(s)
    except (RuntimeError, ValueError):  # e.g. every parameter constant across complete trials
        return pd.DataFrame(columns=["parameter", "importance"])
    return pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())})


# ---------------------------------------------------------------------------------------------------------- curation
def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def numeric_mapping(value: Any) -> dict[str, float] | None:
    """A {label: number} mapping (e.g. source shares), or None when `value` is not one."""
    if isinstance(value, dict) and value and all(isinstance(v, int | float) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}
    return None


def report_sections(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, Any]]:
    """Split a report.json into scalars, chartable {label: number} frames (also one level down) and the rest.

    The curation report's exact keys belong to the curation stage; the dashboard shows whatever it holds.
    """
    scalars: dict[str, Any] = {}
    frames: dict[str, pd.DataFrame] = {}
    other: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, int | float | str | bool) or value is None:
            scalars[key] = value
        elif (m := numeric_mapping(value)) is not None:
            frames[key] = pd.DataFrame({"label": list(m), "value": list(m.values()), "group": key})
        elif isinstance(value, dict) and value and all(numeric_mapping(v) is not None for v in value.values()):
            frames[key] = pd.concat(
                [
                    pd.DataFrame({"label": list(m), "value": list(m.values()), "group": str(g)})
                    for g, v in value.items()
                    if (m := numeric_mapping(v)) is not None
                ],
                ignore_index=True,
            )
        elif isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            frames[key] = pd.DataFrame({"label": range(len(value)), "value": value, "group": key})
        else:
            other[key] = value
    return scalars, frames, other
