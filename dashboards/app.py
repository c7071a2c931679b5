"""AMoE dashboard: `streamlit run dashboards/app.py` (binds 127.0.0.1, see .streamlit/config.toml).

Reads only what the stages wrote: runs/<run>/{params.yaml, metrics.jsonl, eval.json, pca_maps.png},
runs/_teachers/eval.json, data/curation/{selection/report.json, plots/*.png} and the Optuna storage. Every loader
is cached on the files' modification times, so a page load recomputes nothing and a finished stage shows up on the
next rerun. Roots come from the sidebar, defaulting to AMOE_RUNS_DIR / AMOE_CURATION_DIR / AMOE_OPTUNA_STORAGE, else
to params.yaml.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, whatever the working directory
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # amoe_core when the package is not installed

import charts  # noqa: E402
import loaders  # noqa: E402

from amoe_core.tracking.runs import TEACHERS_RUN, RunDir  # noqa: E402


# ---------------------------------------------------------------------------------------------------------- roots
def default_roots() -> dict[str, str]:
    """Roots from the environment, else from ./params.yaml (distill.runs_dir, sample.out, sweep.storage)."""
    roots = {"runs": "runs", "curation": "data/curation", "storage": "sqlite:///runs/optuna.db"}
    try:
        from amoe_core.config import load_params

        p = load_params()
        roots = {"runs": str(p.distill.runs_dir), "curation": str(p.sample.out.parent), "storage": p.sweep.storage}
    except Exception:  # a broken params.yaml must not take the dashboard down; defaults still work
        pass
    env = {"runs": "AMOE_RUNS_DIR", "curation": "AMOE_CURATION_DIR", "storage": "AMOE_OPTUNA_STORAGE"}
    return {k: os.environ.get(env[k], v) for k, v in roots.items()}


# ---------------------------------------------------------------------------------------------------------- cached
@st.cache_data(show_spinner=False, max_entries=8)
def load_runs(runs_dir: str, fingerprint_key: tuple) -> dict[str, Any]:
    """Every frame the run views need; `fingerprint_key` (file mtimes) invalidates the cache when a file changes."""
    runs = loaders.student_runs(runs_dir)
    evals = {r.id: r.eval() for r in runs}
    teachers = RunDir(Path(runs_dir) / TEACHERS_RUN).eval()
    empty_knn = loaders.knn_rows("", {})
    return {
        "ids": [r.id for r in runs],
        "table": loaders.runs_table(runs),
        "curves": {r.id: loaders.loss_curves(r) for r in runs},
        "load": {r.id: loaders.expert_load(r) for r in runs},
        "knn": pd.concat([loaders.knn_rows(i, e) for i, e in evals.items()] or [empty_knn], ignore_index=True),
        "linear": pd.concat([loaders.linear_rows(i, e) for i, e in evals.items()] or [loaders.linear_rows("", {})]),
        "fidelity": pd.concat(
            [loaders.fidelity_rows(i, e) for i, e in evals.items()] or [loaders.fidelity_rows("", {})]
        ),
        "teachers_knn": loaders.knn_rows(TEACHERS_RUN, teachers),
        "pca": {
            r.id: str(r.path / evals[r.id].get("pca_maps", "pca_maps.png"))
            for r in runs
            if (r.path / evals[r.id].get("pca_maps", "pca_maps.png")).exists()
        },
    }


def storage_key(storage: str) -> tuple:
    f = loaders.sqlite_file(storage)
    return loaders.fingerprint([f]) if f is not None else (storage,)


@st.cache_data(show_spinner=False, max_entries=8, ttl=60)
def load_sweep(storage: str, key: tuple) -> dict[str, Any]:
    names = loaders.study_names(storage)
    return {
        "studies": names,
        "trials": {n: loaders.sweep_trials(storage, n) for n in names},
        "importance": {n: loaders.param_importance(storage, n) for n in names},
    }


@st.cache_data(show_spinner=False, max_entries=8)
def load_curation(curation_dir: str, key: tuple) -> dict[str, Any]:
    root = Path(curation_dir)
    report = loaders.read_json(root / "selection" / "report.json")
    return {"report": report, "plots": sorted(str(p) for p in (root / "plots").glob("*.png"))}


# ---------------------------------------------------------------------------------------------------------- views
def runs_view(data: dict[str, Any], selected: list[str]) -> None:
    st.subheader("Runs")
    st.caption("Key metrics and every parameter that differs between runs.")
    st.dataframe(data["table"], hide_index=True)
    if not selected:
        return
    curves = pd.concat([data["curves"][r] for r in selected], ignore_index=True)
    if not curves.empty:
        terms = sorted(curves.term.unique())
        shown = st.multiselect("Loss terms", terms, default=terms, key="terms")
        st.altair_chart(charts.loss_curves(curves[curves.term.isin(shown)]))
    for r in selected:
        if not data["load"][r].empty:
            st.altair_chart(charts.expert_load(data["load"][r]))


def eval_view(data: dict[str, Any], selected: list[str]) -> None:
    knn = data["knn"][data["knn"].run.isin(selected)]
    if knn.empty:
        st.info("No eval.json among the selected runs yet: run `amoe evaluate RUN`.")
        return
    st.subheader("kNN accuracy")
    res = st.selectbox("Resolution (px)", sorted(knn.resolution.unique()), key="eval_res")
    table = knn[knn.resolution == res].pivot_table(index=["run", "dataset", "feature"], columns="k", values="accuracy")
    table.columns = [f"k={k}" for k in table.columns]
    st.dataframe(table.reset_index(), hide_index=True)
    lin = data["linear"][data["linear"].run.isin(selected)]
    if not lin.empty:
        st.subheader("Linear probe accuracy")
        lt = lin.pivot_table(index=["run", "dataset", "feature"], columns="resolution", values="accuracy")
        lt.columns = [f"{c}px" for c in lt.columns]
        st.dataframe(lt.reset_index(), hide_index=True)
    fid = data["fidelity"][data["fidelity"].run.isin(selected)]
    if not fid.empty:
        st.subheader("Student-teacher fidelity")
        st.dataframe(fid, hide_index=True)
    st.subheader("Accuracy vs resolution")
    ks = sorted(knn.k.unique())
    k = st.selectbox("k", ks, index=ks.index(20) if 20 in ks else 0, key="res_k")
    both = pd.concat([knn, data["teachers_knn"]], ignore_index=True)
    st.altair_chart(charts.accuracy_vs_resolution(both, k))


def teachers_view(data: dict[str, Any], selected: list[str]) -> None:
    st.subheader("Teacher vs student (kNN)")
    teachers = data["teachers_knn"]
    if teachers.empty:
        st.info("No teacher baselines yet: run `amoe evaluate --teachers` (writes runs/_teachers/eval.json).")
        return
    cmp = loaders.teacher_vs_student(data["knn"][data["knn"].run.isin(selected)], teachers)
    if cmp.empty:
        st.info("No student:<teacher> features of the selected runs match the teacher baselines.")
        return
    res = st.selectbox("Resolution (px)", sorted(cmp.resolution.unique()), key="tvs_res")
    ks = sorted(cmp.k.unique())
    k = st.selectbox("k", ks, index=ks.index(20) if 20 in ks else 0, key="tvs_k")
    sub = cmp[(cmp.resolution == res) & (cmp.k == k)]
    st.dataframe(sub, hide_index=True)
    st.altair_chart(charts.teacher_vs_student(sub))


def sweep_view(storage: str) -> None:
    st.subheader("Sweep")
    if not loaders.storage_available(storage):
        st.info(f"No Optuna storage at {storage}: run `amoe sweep`.")
        return
    try:
        sweep = load_sweep(storage, storage_key(storage))
    except Exception as e:  # an unreachable RDB URL is shown, not raised
        st.warning(f"Cannot read Optuna storage {storage}: {e}")
        return
    if not sweep["studies"]:
        st.info("The storage holds no study yet.")
        return
    study = st.selectbox("Study", sweep["studies"], key="study")
    trials = sweep["trials"][study]
    st.caption(f"Also browsable with `optuna-dashboard {storage}`.")
    if trials.empty:
        st.info("No trials yet.")
        return
    st.dataframe(trials, hide_index=True)
    st.altair_chart(charts.sweep_history(trials))
    imp = sweep["importance"][study]
    if not imp.empty:
        st.altair_chart(charts.importance(imp))


def curation_view(curation_dir: str) -> None:
    st.subheader("Curation")
    root = Path(curation_dir)
    cur = load_curation(curation_dir, loaders.fingerprint([root / "selection" / "report.json", root / "plots"]))
    if not cur["report"] and not cur["plots"]:
        st.info(f"No curation outputs under {curation_dir}: run `amoe curate sample`.")
        return
    scalars, frames, other = loaders.report_sections(cur["report"])
    if scalars:
        st.dataframe(pd.DataFrame({"key": list(scalars), "value": [str(v) for v in scalars.values()]}), hide_index=True)
    for name, frame in frames.items():
        st.altair_chart(charts.labelled_values(frame, name.replace("_", " ")))
    if other:
        with st.expander("Other report fields"):
            st.json(other)
    for png in cur["plots"]:
        st.image(png, caption=Path(png).stem)


def pca_view(data: dict[str, Any], selected: list[str]) -> None:
    st.subheader("PCA feature maps")
    shown = [r for r in selected if r in data["pca"]]
    if not shown:
        st.info("No pca_maps.png among the selected runs yet.")
    for r in shown:
        st.image(data["pca"][r], caption=f"{r}: first three principal components of patch features as RGB")


def main() -> None:
    st.set_page_config(page_title="AMoE runs", layout="wide")
    st.title("AMoE runs")
    roots = default_roots()
    with st.sidebar:
        runs_dir = st.text_input("Runs directory", roots["runs"])
        curation_dir = st.text_input("Curation directory", roots["curation"])
        storage = st.text_input("Optuna storage", roots["storage"])
    fp = loaders.runs_fingerprint(runs_dir)
    data = load_runs(runs_dir, fp)
    with st.sidebar:
        selected = st.multiselect("Runs", data["ids"], default=data["ids"][:6])
    if not data["ids"]:
        st.info(f"No runs under {runs_dir!r} yet: `amoe distill` (or `make demo`) creates them.")
    tabs = st.tabs(["Runs", "Evaluation", "Teachers vs student", "Sweep", "Curation", "PCA maps"])
    with tabs[0]:
        runs_view(data, selected)
    with tabs[1]:
        eval_view(data, selected)
    with tabs[2]:
        teachers_view(data, selected)
    with tabs[3]:
        sweep_view(storage)
    with tabs[4]:
        curation_view(curation_dir)
    with tabs[5]:
        pca_view(data, selected)


main()
