"""AMoE dashboard: `amoe dashboard` (binds 127.0.0.1; `python -m streamlit run dashboards/app.py` from the checkout works
too: the page imports its modules from the `dashboards` package, found on the repository root).

Reads only what the stages wrote: runs/<run>/{params.yaml, dvclive/ (curves), train.json, eval.json, pca_maps.png},
runs/_teachers/eval.json, runs/_sweep/<study>/<trial>/ (hidden by default), data/curation/{selection/report.json,
plots/*.png} and the Optuna storage. Runs are grouped into variants (params that differ; seeds folded into
mean ± std) by the same `amoe_core.tracking` code as `amoe report`. Every loader is cached on the files'
modification times. The directories and the storage are fixed by whoever launched the page (AMOE_RUNS_DIR, a
list separated by the OS path separator, AMOE_CURATION_DIR, AMOE_OPTUNA_STORAGE; else params.yaml): a visitor can
switch between the allowed runs directories but cannot point the page anywhere else.

One Streamlit page in one file (~390 lines): its views are the page's sections in display order, and Streamlit
reruns this script top to bottom; the data behind them comes from loaders.py, sweep_loaders.py and
curation_loaders.py, the charts from charts.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from amoe_core.curation.report import REPORT_FILE
from amoe_core.dashboard import default_runs_dirs
from amoe_core.tracking import eval_record
from amoe_core.tracking.curves import last_written
from amoe_core.tracking.palette import TEACHER_PREFIX, variant_colours
from amoe_core.tracking.runs import TEACHERS_RUN, RunDir, md_escape, student_runs
from amoe_core.tracking.variants import headline_feature, main_resolution_px, variant_order
from dashboards import charts, curation_loaders, loaders, sweep_loaders

LIVE_REFRESH_S = 2.0


# ---------------------------------------------------------------------------------------------------------- roots
def allowed_roots() -> dict[str, Any]:
    """Roots from the environment (set by `amoe dashboard`), else from ./params.yaml: the runs directories
    (amoe_core/dashboard.py's defaults), the curation directory and the Optuna storage."""
    roots: dict[str, Any] = {"runs": ["runs"], "curation": "data/curation", "storage": "sqlite:///runs/optuna.db"}
    try:
        from amoe_core.config import load_params

        p = load_params()
        roots = {"runs": default_runs_dirs(p), "curation": str(p.sample.out.parent), "storage": p.sweep.storage}
    except Exception:  # a broken params.yaml must not take the dashboard down; defaults still work
        pass
    if os.environ.get("AMOE_RUNS_DIR"):
        roots["runs"] = [d for d in os.environ["AMOE_RUNS_DIR"].split(os.pathsep) if d]
    roots["curation"] = os.environ.get("AMOE_CURATION_DIR", roots["curation"])
    roots["storage"] = os.environ.get("AMOE_OPTUNA_STORAGE", roots["storage"])
    return roots


# ---------------------------------------------------------------------------------------------------------- cached
@st.cache_data(show_spinner=False, max_entries=8)
def load_runs(runs_dir: str, include_sweeps: bool, fingerprint_key: tuple) -> dict[str, Any]:
    """Every frame the run views need; `fingerprint_key` (file mtimes) invalidates the cache when a file changes."""
    runs = student_runs(runs_dir, include_sweeps)
    names = {loaders.run_name(r, runs_dir): r for r in runs}
    labels = loaders.variant_labels(runs, runs_dir)
    evals = {n: r.eval() for n, r in names.items()}
    teachers = RunDir(Path(runs_dir) / TEACHERS_RUN).eval()
    teacher_knn = loaders.knn_rows(TEACHERS_RUN, teachers)
    variants = variant_order(labels.values())
    teacher_labels = sorted({TEACHER_PREFIX + f.split(":", 1)[1] for f in teacher_knn.feature})

    def tagged(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
        df = pd.concat(frames or [empty], ignore_index=True)
        return df.assign(variant=df.run.map(labels))

    return {
        "runs": list(names),
        "labels": labels,
        "variants": variants,
        # one colour per variant on every chart and tab, from all of the directory's variants (never the selection)
        "colours": variant_colours(variants + teacher_labels),
        "main_res": main_resolution_px(runs[0].params()) if runs else 64,
        "variants_table": loaders.variants_table(runs, runs_dir),
        "table": loaders.runs_table(runs, runs_dir),
        "curves": tagged(
            [loaders.loss_curves(r, n) for n, r in names.items()], loaders.loss_curves(RunDir(Path()), "")
        ),
        "load": pd.concat(
            [loaders.expert_load(r, n) for n, r in names.items()] or [loaders.expert_load(RunDir(Path()), "")]
        ),
        "knn": tagged([loaders.knn_rows(n, e) for n, e in evals.items()], loaders.knn_rows("", {})),
        "linear": tagged([loaders.linear_rows(n, e) for n, e in evals.items()], loaders.linear_rows("", {})),
        "fidelity": tagged([loaders.fidelity_rows(n, e) for n, e in evals.items()], loaders.fidelity_rows("", {})),
        "dense": tagged([loaders.result_rows(n, e) for n, e in evals.items()], loaders.result_rows("", {})),
        "teachers_dense": loaders.result_rows(TEACHERS_RUN, teachers),
        "teachers_knn": teacher_knn,
        "pca": {n: str(p) for n, r in names.items() if (p := pca_file(r, evals[n])) is not None},
        "damaged": {n: why for n, r in names.items() if (why := eval_record.damage(r.eval_file)) is not None},
    }


def pca_file(run: RunDir, ev: dict[str, Any]) -> Path | None:
    """The run's PCA image named in eval.json, only when it exists inside the run directory (the page shows no
    file outside the roots it was given)."""
    path = (run.path / str(ev.get("pca_maps", "pca_maps.png"))).resolve()
    return path if path.is_relative_to(run.path.resolve()) and path.is_file() else None


def storage_key(storage: str) -> tuple:
    f = sweep_loaders.sqlite_file(storage)
    return loaders.fingerprint([f]) if f is not None else (storage,)


@st.cache_data(show_spinner=False, max_entries=8, ttl=60)
def load_sweep(storage: str, key: tuple) -> dict[str, Any]:
    names = sweep_loaders.study_names(storage)
    return {
        "studies": names,
        "objective": {n: sweep_loaders.objective_name(storage, n) for n in names},
        "trials": {n: sweep_loaders.sweep_trials(storage, n) for n in names},
        "importance": {n: sweep_loaders.param_importance(storage, n) for n in names},
    }


@st.cache_data(show_spinner=False, max_entries=8)
def load_curation(curation_dir: str, key: tuple) -> dict[str, Any]:
    root = Path(curation_dir)
    report = curation_loaders.read_json(root / "selection" / REPORT_FILE)
    return {"report": report, "plots": sorted(str(p) for p in (root / "plots").glob("*.png"))}


# ---------------------------------------------------------------------------------------------------------- views
def table(df: pd.DataFrame) -> None:
    """A table as tall as its rows (no scrolling inside it) with the variant's full label."""
    wide = {c: st.column_config.TextColumn(width="large") for c in ("variant", "run") if c in df.columns}
    st.dataframe(df, hide_index=True, height="content", column_config=wide)


def _resolution_index(options: list[int], main: int) -> int:
    """Selectors start at the runs' evaluate.main_resolution (the resolution the headline numbers use)."""
    return options.index(main) if main in options else 0


def _k_index(ks: list[int]) -> int:
    return ks.index(20) if 20 in ks else 0


def runs_view(data: dict[str, Any], selected: list[str]) -> None:
    st.subheader("Variants")
    st.caption(
        "Runs whose params differ only by seed form one variant (the grouping of `amoe report`); numbers are "
        "mean ± std over its seeds. Accuracies in %, at the runs' main resolution."
    )
    vt = data["variants_table"]
    table(vt[vt.variant.isin(set(data["labels"][r] for r in selected))])
    if loaders.DIFF_COLUMN in vt.columns:
        st.caption(
            "Δ: the variant's kNN average minus the reference's, in points, ± the standard error of that difference "
            "over seeds (Welch, as `amoe report`'s findings): beyond 2 s.e. it is more than seed noise."
        )
    with st.expander("Single runs (key metrics and every condition param that differs)"):
        table(data["table"][data["table"].run.isin(selected)])
    curves = data["curves"][data["curves"].run.isin(selected)]
    if not curves.empty:
        terms = sorted(curves.term.unique())
        shown = st.multiselect("Loss terms", terms, default=terms, key="terms")
        st.altair_chart(charts.loss_curves(curves[curves.term.isin(shown)], data["colours"]))
    load = data["load"][data["load"].run.isin(selected)]
    if not load.empty:
        st.caption("Uniform routing is 1 / number of experts in every cell; one colour scale for all runs.")
        st.altair_chart(charts.expert_load(load))
    if curves.empty and load.empty:
        st.info(
            "No training curves among the selected runs (ablation runs collected before curves were kept have "
            "none): `amoe distill -S distill.run=NAME` writes them, `amoe ablate` collects them."
        )


def live_view(data: dict[str, Any], runs_dir: str, selected: list[str]) -> None:
    st.subheader("Live training")
    runs = [RunDir(Path(runs_dir) / n) for n in selected]  # the sidebar's selection, as on every tab
    written = {r: last_written(r.path) for r in runs}
    growing = sorted((r for r in runs if written[r] is not None), key=lambda r: -written[r])
    if not growing:
        st.info("No selected run with training curves: start one with `amoe distill -S distill.run=NAME`.")
        return
    names = [loaders.run_name(r, runs_dir) for r in growing]
    name = st.selectbox("Run (most recently written first)", names, key="live_run")
    follow = st.toggle(f"Auto-refresh every {LIVE_REFRESH_S:.0f} s while it trains", value=True, key="live_follow")
    run = RunDir(Path(runs_dir) / name)
    every = LIVE_REFRESH_S if follow and not run.train_file.exists() else None  # train.json: the run has finished

    @st.fragment(run_every=every)
    def follow_run() -> None:
        records = run.metrics()
        target = int((run.params().get("distill") or {}).get("steps", 0)) or None
        step = max((int(m["step"]) for m in records if "step" in m), default=0)
        age = time.time() - (last_written(run.path) or time.time())
        state = "finished" if run.train_file.exists() else f"last record {age:.0f} s ago"
        st.markdown(f"**{md_escape(name)}**: step {step}" + (f" of {target}" if target else "") + f" ({state})")
        if target:
            st.progress(min(step / target, 1.0))
        last = records[-1] if records else {}
        cols = st.columns(3)
        cols[0].metric("loss/total", f"{last.get('loss/total', float('nan')):.4f}")
        cols[1].metric("tokens/s", f"{last.get('tokens_per_s', float('nan')):,.0f}")
        cols[2].metric("lr", f"{last.get('lr', float('nan')):.2e}")
        curves = loaders.loss_curves(run, name).assign(variant=data["labels"].get(name, name))
        if not curves.empty:
            st.altair_chart(charts.loss_curves(curves, data["colours"]))

    follow_run()


def eval_view(data: dict[str, Any], selected: list[str]) -> None:
    knn = data["knn"][data["knn"].run.isin(selected)]
    if knn.empty:
        st.info("No eval.json among the selected runs yet: run `amoe evaluate RUN`.")
        return
    st.subheader("kNN accuracy (%)")
    resolutions, ks = sorted(knn.resolution.unique()), sorted(knn.k.unique())
    c1, c2, c3 = st.columns(3)
    res = c1.selectbox(
        "Resolution (px)", resolutions, index=_resolution_index(resolutions, data["main_res"]), key="eval_res"
    )
    k = c2.selectbox("k", ks, index=_k_index(ks), key="res_k")
    features = sorted(knn.feature.unique())
    head = headline_feature(features)
    shown = c3.multiselect("Features", features, default=[head] if head else features, key="eval_feats")
    at = knn[(knn.resolution == res) & (knn.k == k) & knn.feature.isin(shown)]
    table(loaders.mean_std_table(at, ["variant", "feature"], "dataset"))
    lin = data["linear"][data["linear"].run.isin(selected) & data["linear"].feature.isin(shown)]
    if not lin.empty:
        st.subheader("Linear probe accuracy (%)")
        lt = lin.assign(resolution=lin.resolution.astype(str) + "px")
        table(loaders.mean_std_table(lt, ["variant", "feature", "dataset"], "resolution"))
    dense = data["dense"][data["dense"].run.isin(selected)]
    teachers_dense = data["teachers_dense"]
    teachers_dense = teachers_dense.assign(variant="teacher " + teachers_dense.feature.str.split(":").str[1])
    both = pd.concat([teachers_dense, dense], ignore_index=True)
    for section, metric, title in (
        ("zero_shot", "top1", "Zero-shot top-1 (%)"),
        ("segmentation", "miou", "Segmentation mIoU (%)"),
        ("segmentation", "pixel_acc", "Segmentation pixel accuracy (%)"),
    ):
        rows = both[(both.section == section) & (both.metric == metric)]
        if not rows.empty:
            st.subheader(title)
            rows = rows.assign(resolution=rows.resolution.astype(str) + "px")
            table(loaders.mean_std_table(rows, ["variant", "feature", "dataset"], "resolution", "value"))
    fid = data["fidelity"][data["fidelity"].run.isin(selected)]
    if not fid.empty:
        st.subheader("Student-teacher fidelity")
        metrics = [c for c in ("summary_cos", "patch_cos", "cka", "spearman") if c in fid.columns]
        long = fid.melt(id_vars=["variant", "teacher"], value_vars=metrics, var_name="metric", value_name="value")
        fid_table = loaders.mean_std_table(long, ["variant", "teacher"], "metric", "value", scale=1, digits=3)
        table(fid_table)
    with st.expander("Per run"):
        per_run = at.pivot_table(index=["run", "variant", "feature"], columns="dataset", values="accuracy") * 100
        table(per_run.round(1).reset_index())
    st.subheader("Accuracy vs resolution")
    per_run = knn[(knn.k == k) & knn.feature.isin(shown)].assign(accuracy=lambda d: 100 * d.accuracy)
    teachers = data["teachers_knn"]
    teachers = teachers[teachers.k == k]
    teachers = teachers.assign(
        variant=TEACHER_PREFIX + teachers.feature.str.split(":").str[1], accuracy=100 * teachers.accuracy
    )
    teacher_rows = [teachers.assign(feature=f) for f in shown]  # a teacher is the reference line in every row
    both = pd.concat([per_run, *teacher_rows], ignore_index=True)
    both["feature"] = both.feature.str.replace(":", " ")  # a facet header drops the colon: "student ensemble"
    st.caption("Each dataset on its own axis, fitted to its numbers; teachers are the dashed grey lines.")
    st.altair_chart(charts.accuracy_vs_resolution(both, k, data["colours"]))


def teachers_view(data: dict[str, Any], selected: list[str]) -> None:
    st.subheader("Teacher vs student (kNN, %)")
    teachers = data["teachers_knn"]
    if teachers.empty:
        st.info("No teacher baselines yet: run `amoe evaluate --teachers` (writes runs/_teachers/eval.json).")
        return
    cmp = loaders.teacher_vs_student(data["knn"][data["knn"].run.isin(selected)], teachers)
    if cmp.empty:
        st.info(
            "No student:<teacher> features of the selected runs match the teacher baselines: "
            "`amoe evaluate RUN` writes them."
        )
        return
    cmp["variant"] = cmp.run.map(data["labels"])
    resolutions, ks = sorted(cmp.resolution.unique()), sorted(cmp.k.unique())
    c1, c2 = st.columns(2)
    res = c1.selectbox(
        "Resolution (px)", resolutions, index=_resolution_index(resolutions, data["main_res"]), key="tvs_res"
    )
    k = c2.selectbox("k", ks, index=_k_index(ks), key="tvs_k")
    sub = cmp[(cmp.resolution == res) & (cmp.k == k)]
    rank = {v: i for i, v in enumerate(data["variants"])}
    sub = sub.sort_values("variant", key=lambda s: s.map(rank), kind="stable")  # the reference first, as the report
    summary = sub.groupby(["variant", "dataset", "teacher"], sort=False).agg(
        student=("accuracy_student", lambda x: loaders.mean_std(list(x))),
        teacher_acc=("accuracy_teacher", "first"),
        delta=("delta", "mean"),
        runs=("run", "count"),
    )
    summary["teacher_acc"] = (100 * summary.teacher_acc).map("{:.1f}".format)
    summary["delta"] = (100 * summary.delta).map("{:+.1f}".format)
    names = {"teacher_acc": "teacher alone", "delta": "student - teacher (mean)"}
    st.caption("Each chart's axis is fitted to its numbers; the dashed line is the teacher alone.")
    pairs = sorted({(d, t) for d, t in zip(sub.dataset, sub.teacher)})
    cols = st.columns(2)
    for i, (d, t) in enumerate(pairs):
        part = sub[(sub.dataset == d) & (sub.teacher == t)]
        rows = part.assign(accuracy=100 * part.accuracy_student)[["variant", "run", "accuracy"]]
        title = f"{d}, {res} px: teacher {t} vs the student's {t} adaptor"
        chart = charts.teacher_vs_student(rows, 100 * float(part.accuracy_teacher.iloc[0]), data["colours"], title)
        # the key includes the resolution: a new chart element per choice, sized for its own rows
        cols[i % 2].altair_chart(chart, width="content", key=f"tvs-{d}-{t}-{res}-{k}")
    table(summary.reset_index().rename(columns=names))


def sweep_view(storage: str) -> None:
    st.subheader("Sweep")
    if not sweep_loaders.storage_available(storage):
        st.info(f"No Optuna storage at {storage}: run `amoe sweep`.")
        return
    try:
        sweep = load_sweep(storage, storage_key(storage))
    except Exception as e:  # an unreachable RDB URL is shown, not raised
        st.warning(f"Cannot read Optuna storage {storage}: {e}")
        return
    if not sweep["studies"]:
        st.info(f"The storage {storage} holds no study yet: run `amoe sweep`.")
        return
    study = st.selectbox("Study", sweep["studies"], key="study")
    trials = sweep["trials"][study]
    st.caption(f"Also browsable with `optuna-dashboard {storage}`. Trial runs live under runs/_sweep/{study}/.")
    if trials.empty:
        st.info("No trials yet: `amoe sweep` runs them.")
        return
    st.caption("The objective is a complete trial's; a pruned or failed trial has none (its row's value is empty).")
    table(trials)
    st.altair_chart(charts.sweep_history(trials, sweep["objective"][study]))
    imp = sweep["importance"][study]
    done = int((trials.state == "COMPLETE").sum())
    if not imp.empty:
        if done < sweep_loaders.RELIABLE_TRIALS:
            st.warning(
                f"Parameter importance from only {done} finished trials: fANOVA needs about "
                f"{sweep_loaders.RELIABLE_TRIALS} or more before its ranking means much."
            )
        st.altair_chart(
            charts.importance(imp, f"Parameter importance (fANOVA, {done} finished trials)"), width="stretch"
        )


def curation_view(curation_dir: str) -> None:
    st.subheader("Curation")
    root = Path(curation_dir)
    cur = load_curation(curation_dir, loaders.fingerprint([root / "selection" / REPORT_FILE, root / "plots"]))
    if not cur["report"] and not cur["plots"]:
        st.info(f"No curation outputs under {curation_dir}: run `amoe curate sample`.")
        return
    scalars, frames, other = curation_loaders.report_sections(cur["report"])
    if scalars:
        report_table = pd.DataFrame({"key": list(scalars), "value": [str(v) for v in scalars.values()]})
        report_table["meaning"] = report_table.key.map(lambda k: curation_loaders.CURATION_TERMS.get(k, ""))
        table(report_table)
    for name, frame in frames.items():
        st.altair_chart(charts.labelled_values(frame, name.replace("_", " ")))
        if name in curation_loaders.CURATION_TERMS:
            st.caption(curation_loaders.CURATION_TERMS[name])
    if other:
        with st.expander("Other report fields"):
            st.json(other)
    for png in cur["plots"]:
        st.image(png, caption=Path(png).stem)


def pca_view(data: dict[str, Any], selected: list[str]) -> None:
    st.subheader("PCA feature maps")
    shown = [r for r in selected if r in data["pca"]]
    if not shown:
        st.info("No pca_maps.png among the selected runs yet: `amoe evaluate RUN` draws it.")
    for r in shown:
        st.image(data["pca"][r], caption=f"{r}: first three principal components of patch features as RGB")


def variant_selection(runs_dir: str, include_sweeps: bool, options: list[str]) -> list[str]:
    """The sidebar's variant filter. Its options change with "Show sweep trials", which makes it a new widget
    (keyed by what the options come from); it starts from the last choice in this runs directory, plus whatever
    variants are new, so toggling the sweep trials never resets a selection. Another directory starts with all."""
    memory = f"variants-last-{runs_dir}"
    before, chosen_before = st.session_state.get(memory, (options, options))
    default = [v for v in options if v in chosen_before or v not in before]
    chosen = st.multiselect("Variants", options, default=default, key=f"variants-{runs_dir}-{include_sweeps}")
    st.session_state[memory] = (options, chosen)
    return chosen


# Multiselect chips show the whole label: Streamlit cuts a chip's text at a fixed width with an ellipsis, and two
# variants then read the same ("selection=random, ta..."). A long label wraps inside its chip instead, and the box
# grows with its chips rather than scrolling inside (Streamlit caps it at ~4 rows).
FULL_CHIPS = """<style>
[data-testid="stMultiSelect"] .react-aria-ComboBox > div { max-height: none !important; }
[data-testid="stMultiSelect"] .react-aria-ComboBox > div > div { max-height: none !important; overflow: visible !important; }
[data-testid="stMultiSelect"] span[data-tag] { max-width: 100% !important; height: auto !important; }
[data-testid="stMultiSelect"] span[data-tag] > span[title] {
  max-width: none !important; overflow: visible !important; text-overflow: clip !important;
  white-space: normal !important; overflow-wrap: anywhere; }
</style>"""


def main() -> None:
    st.set_page_config(page_title="AMoE runs", layout="wide")
    st.html(FULL_CHIPS)  # a fixed stylesheet: no user text in it
    st.title("AMoE runs")
    roots = allowed_roots()
    with st.sidebar:
        runs_dir = st.selectbox("Runs directory", roots["runs"], key="runs_dir")
        include_sweeps = st.checkbox("Show sweep trials", value=False, key="sweeps")
    data = load_runs(runs_dir, include_sweeps, loaders.runs_fingerprint(runs_dir, include_sweeps))
    with st.sidebar:
        chosen = variant_selection(runs_dir, include_sweeps, data["variants"])
        selected = [r for r in data["runs"] if data["labels"][r] in chosen]
        st.caption(f"{len(selected)} of {len(data['runs'])} runs selected.")
        st.caption(f"Curation: `{roots['curation']}`  \nOptuna storage: `{roots['storage']}`")
    if not data["runs"]:
        st.info(f"No runs under {runs_dir!r} yet: `amoe distill` (or `make demo`) creates them.")
    for name, why in sorted(data["damaged"].items()):  # one line per damaged file; the other runs still show
        st.warning(f"{name}/eval.json is damaged ({why}): this run shows no evaluation; rerun `amoe evaluate` for it")
    names = ["Runs", "Live", "Evaluation", "Teachers vs student", "Sweep", "Curation", "PCA maps"]
    tabs = dict(zip(names, st.tabs(names)))
    with tabs["Runs"]:
        runs_view(data, selected)
    with tabs["Live"]:
        live_view(data, runs_dir, selected)
    with tabs["Evaluation"]:
        eval_view(data, selected)
    with tabs["Teachers vs student"]:
        teachers_view(data, selected)
    with tabs["Sweep"]:
        sweep_view(roots["storage"])
    with tabs["Curation"]:
        curation_view(roots["curation"])
    with tabs["PCA maps"]:
        pca_view(data, selected)


main()
