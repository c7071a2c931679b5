"""Read an Optuna storage (`amoe sweep`'s studies) into pandas frames for the dashboard's sweep view.

optuna is imported inside the functions: it is heavy, and only this view needs it (start-up time of the dashboard).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

RELIABLE_TRIALS = 10  # fANOVA fits a random forest on the finished trials: with fewer, its ranking is mostly noise


def sqlite_file(storage: str) -> Path | None:
    """The database file of a `sqlite:///path` URL (None for other RDB URLs)."""
    return Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None


def storage_available(storage: str) -> bool:
    """False for a SQLite file that does not exist: opening it would create an empty database as a side effect."""
    f = sqlite_file(storage)
    return bool(storage) and (f is None or f.exists())


def study_names(storage: str) -> list[str]:
    import optuna  # start-up time: see the module docstring

    if not storage_available(storage):
        return []
    return sorted(optuna.study.get_all_study_names(storage=storage))


def objective_name(storage: str, study: str) -> str:
    """The study's metric name (`amoe sweep` names it), else a generic label for studies made elsewhere."""
    import optuna  # start-up time: see the module docstring

    names = optuna.load_study(study_name=study, storage=storage).metric_names
    return names[0] if names else "objective"


def sweep_trials(storage: str, study: str) -> pd.DataFrame:
    """Every trial of a study: number, state, value (the objective; empty unless COMPLETE), best value so far, and its
    parameters (columns params_*)."""
    import optuna  # start-up time: see the module docstring

    s = optuna.load_study(study_name=study, storage=storage)
    df = s.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
    if df.empty:
        return df
    if s.metric_names:  # a named objective becomes column `value_<name>`; the chart names it on its axis instead
        df = df.rename(columns={f"value_{s.metric_names[0]}": "value"})
    df["state"] = df["state"].astype(str)
    # only a complete trial has an objective: Optuna stores a pruned trial's last intermediate value as its value
    df["value"] = df["value"].where(df["state"] == "COMPLETE")
    df["best so far"] = df["value"].cummax().ffill()  # maximised (kNN accuracy); carried past pruned trials
    return df


def param_importance(storage: str, study: str) -> pd.DataFrame:
    """Optuna's fANOVA parameter importances (computed from two finished trials on; the view warns below
    `RELIABLE_TRIALS`)."""
    import optuna  # start-up time: see the module docstring

    s = optuna.load_study(study_name=study, storage=storage)
    complete = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return pd.DataFrame(columns=["parameter", "importance"])
    try:
        imp = optuna.importance.get_param_importances(s)
    except (RuntimeError, ValueError):  # e.g. every parameter constant across complete trials
        return pd.DataFrame(columns=["parameter", "importance"])
    return pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())})
