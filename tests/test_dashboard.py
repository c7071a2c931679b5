"""The Streamlit dashboard under streamlit.testing.v1.AppTest on fixture runs written here (no stage runs)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from amoe_core.tracking.palette import REFERENCE, variant_colours  # noqa: E402
from amoe_core.tracking.runs import student_runs  # noqa: E402
from amoe_core.train.live import LiveLog  # noqa: E402
from dashboards import loaders  # noqa: E402  (the screenshots' source data)

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboards" / "app.py")
DATASETS = ("fmnist", "clipart")
RESOLUTIONS = (32, 64, 112)
KS = (10, 20, 100)


def _acc(run_index: int, ds: int, feat: int, res: int, k: int) -> float:
    """A distinct, reproducible accuracy per cell so a table can be checked against its source."""
    return round(0.5 + 0.1 * run_index + 0.03 * ds + 0.01 * feat + 0.001 * res + 0.0001 * k, 6)


def _eval(run_index: int, features: list[str]) -> dict:
    return {
        "knn": {
            d: {
                f: {
                    f"{r}px": {f"k{k}": _acc(run_index, di, fi, ri, ki) for ki, k in enumerate(KS)}
                    for ri, r in enumerate(RESOLUTIONS)
                }
                for fi, f in enumerate(features)
            }
            for di, d in enumerate(DATASETS)
        },
        "linear": {
            d: {
                f: {f"{r}px": _acc(run_index, di, fi, ri, 9) for ri, r in enumerate(RESOLUTIONS)}
                for fi, f in enumerate(features)
            }
            for di, d in enumerate(DATASETS)
        },
        "zero_shot": {
            d: {f: {"64px": _acc(run_index, di, fi, 1, 7)} for fi, f in enumerate(features) if f.endswith(":siglip")}
            for di, d in enumerate(DATASETS)
        },
        "segmentation": {
            "voc": {
                f: {"64px": {"miou": _acc(run_index, 0, fi, 1, 5) - 0.4, "pixel_acc": 0.9}}
                for fi, f in enumerate(features)
            }
        },
        "fidelity": {
            t: {"summary_cos": 0.9, "patch_cos": 0.8, "cka": 0.7, "spearman": 0.6} for t in ("dino", "siglip")
        },
        "pca_maps": "pca_maps.png",
    }


STUDENT_FEATURES = ["student:dino", "student:ensemble", "student:native", "student:siglip"]


RUNS = (  # name, seed, relational, c_max: alpha and alpha-s1 are one variant (seeds), beta another
    ("alpha", 0, "arkd", 256),
    ("alpha-s1", 1, "arkd", 256),
    ("beta", 0, "rkd", 128),
)


def _write_run(run: Path, i: int, name: str, seed: int, relational: str, c_max: int, rng) -> None:
    run.mkdir(parents=True)
    params = {
        "seed": 0,
        "packing": {"c_max": c_max, "max_images_per_seq": 16},
        "loss": {"relational": relational, "relational_weight": 1.0},
        "distill": {"run": name, "steps": 5, "seed": seed},
        "evaluate": {"main_resolution": 64},
        "report": {"runs_dir": f"elsewhere-{i}"},  # another command's setting: never a column nor a variant
    }
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    live = LiveLog(run / "dvclive", resume=False)
    for step in range(1, 6):
        live.log(
            {
                "step": step,
                "lr": 1e-3,
                "tokens_per_s": 1000.0 * (i + 1) + step,
                "loss/total": 10.0 / step + i,
                "loss/dino/summary": 1.0 / step,
                "loss/siglip/patch": 2.0 / step,
                "loss/relational": 0.5 / step,
                "expert_load": (rng.dirichlet(np.ones(4), size=3)).tolist(),
            }
        )
    live.close()
    (run / "eval.json").write_text(json.dumps(_eval(i, STUDENT_FEATURES)))
    Image.fromarray(rng.integers(0, 255, (32, 96, 3), dtype=np.uint8)).save(run / "pca_maps.png")


def write_fixture(root: Path) -> dict[str, Path]:
    """Three runs (two seeds of one variant, one other variant differing in loss.relational and packing.c_max), a
    sweep trial under _sweep/, teacher baselines, curation outputs, a study."""
    runs = root / "runs"
    rng = np.random.default_rng(0)
    for i, (name, seed, relational, c_max) in enumerate(RUNS):
        _write_run(runs / name, i, name, seed, relational, c_max, rng)
    _write_run(runs / "_sweep" / "demo-sweep" / "t0000", 3, "t0000", 0, "none", 512, rng)
    (runs / "_teachers").mkdir()
    teachers = _eval(5, ["teacher:dino", "teacher:siglip"])
    (runs / "_teachers" / "eval.json").write_text(json.dumps(teachers))

    cur = root / "curation"
    (cur / "selection").mkdir(parents=True)
    (cur / "plots").mkdir()
    report = {
        "target": 4000,
        "top_level_clusters_represented": 20,
        "source_shares": {"balanced": {"fashion_mnist": 0.5, "openclipart": 0.4, "tuxpaint": 0.1}},
        "cluster_sizes_before": [50, 30, 10, 5],
        "level1_cluster_balance": {"pool": 0.61, "balanced": 0.93},
    }
    (cur / "selection" / "report.json").write_text(json.dumps(report))
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(cur / "plots" / "cluster_sizes.png")

    import optuna

    storage = f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(
        study_name="demo-sweep", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["kNN accuracy (fixture)"])
    study.optimize(lambda t: t.suggest_float("x", 0, 1) * 0.5 + t.suggest_int("c", 1, 4) * 0.01, n_trials=6)
    write_pruned_study(storage)
    return {"runs": runs, "curation": cur, "storage": storage, "teachers": teachers}  # type: ignore[dict-item]


PRUNED_REPORT = -1.0192  # a pruned trial's last intermediate value: never to be shown as an objective


def write_pruned_study(storage: str) -> None:
    """Study "pruned-sweep": trials 0, 1, 3 complete (0.61, 0.64, 0.62), 2 pruned after reporting PRUNED_REPORT,
    4 failed."""
    import optuna

    study = optuna.create_study(study_name="pruned-sweep", storage=storage, direction="maximize")
    for value in [0.61, 0.64, "pruned", 0.62, "fail"]:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        if value == "pruned":
            trial.report(PRUNED_REPORT, step=1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif value == "fail":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> dict:
    return write_fixture(tmp_path_factory.mktemp("dash"))


@pytest.fixture
def app(fixture_root, monkeypatch) -> AppTest:
    monkeypatch.setenv("AMOE_RUNS_DIR", str(fixture_root["runs"]))
    monkeypatch.setenv("AMOE_CURATION_DIR", str(fixture_root["curation"]))
    monkeypatch.setenv("AMOE_OPTUNA_STORAGE", fixture_root["storage"])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _frame(at: AppTest, columns: set[str]):
    """The first dataframe element holding all `columns`."""
    for df in at.dataframe:
        if columns <= set(df.value.columns):
            return df.value
    raise AssertionError(f"no table with columns {columns}; tables: {[list(d.value.columns) for d in at.dataframe]}")


def _chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_variants_fold_seeds_into_mean_and_std(app):
    variants = _frame(app, {"variant", "seeds", "runs"}).set_index("variant")
    # alpha and alpha-s1 differ only by seed and run name: one variant. Labels are the report's: each variant is
    # named by where it departs from the reference, the settings of most runs (alpha's two seeds)
    assert list(variants.index) == ["reference", "relational=rkd, c_max=128"]
    ref = variants.loc["reference"]
    assert ref["seeds"] == "0, 1" and ref["runs"] == 2
    col = "kNN clipart % (ensemble, 64px, k20)"
    a, b = 100 * _acc(0, 1, 1, 1, 1), 100 * _acc(1, 1, 1, 1, 1)  # runs 0 and 1: clipart, ensemble, 64px, k20
    assert ref[col] == f"{statistics.fmean([a, b]):.1f} ± {statistics.stdev([a, b]):.1f}"
    # throughput: median of steps 2-5 (the first fifth is warm-up, tracking.summarize_training), then mean ± std
    tps = [1003.5, 2003.5]  # with a thousands separator
    assert ref["tokens/s"] == f"{statistics.fmean(tps):,.0f} ± {statistics.stdev(tps):,.0f}" == "1,504 ± 707"
    # the sweep trial under _sweep/ is hidden by default
    assert not any(v.startswith("sweep ") for v in variants.index)


def test_runs_table_holds_differing_condition_params_and_key_metrics(app):
    table = _frame(app, {"run", "variant", "loss.relational"}).set_index("run")
    assert list(table.index) == ["alpha", "alpha-s1", "beta"]
    # only condition params that differ; run identity (name, seed) and other commands' sections are not columns
    assert {"loss.relational", "packing.c_max"} <= set(table.columns)
    assert not {"distill.run", "distill.seed", "report.runs_dir", "loss.relational_weight"} & set(table.columns)
    assert table.loc["alpha-s1", "seed"] == 1 and table.loc["alpha-s1", "variant"] == "reference"
    assert table.loc["beta", "loss.relational"] == "rkd" and table.loc["alpha", "packing.c_max"] == 256
    assert table.loc["alpha", "steps"] == 5
    assert table.loc["beta", "loss/total (last)"] == pytest.approx(10.0 / 5 + 2)
    assert table.loc["beta", "tokens/s (median)"] == "3,004"  # median of steps 2-5 (warm-up cut): 3003.5, rounded
    col = "kNN clipart % (ensemble, 64px, k20)"  # student:ensemble at main_resolution 64px, k20
    assert table.loc["beta", col] == round(100 * _acc(2, 1, 1, 1, 1), 1)  # one decimal, as the report
    assert not table.isna().any().any()


def test_sweep_trials_show_on_demand(app):
    app.sidebar.checkbox(key="sweeps").check().run()
    assert not app.exception
    variants = _frame(app, {"variant", "seeds", "runs"})
    assert "sweep demo-sweep/t0000" in set(variants.variant)
    table = _frame(app, {"run", "variant"})
    assert "_sweep/demo-sweep/t0000" in set(table.run)


def test_eval_tables_default_to_the_main_resolution(app):
    assert app.selectbox(key="eval_res").value == 64 and app.selectbox(key="tvs_res").value == 64
    assert app.selectbox(key="res_k").value == 20
    knn = _frame(app, {"variant", "feature", "fmnist", "clipart"})
    ref = knn[(knn.variant == "reference") & (knn.feature == "student:ensemble")].iloc[0]
    a, b = 100 * _acc(0, 0, 1, 1, 1), 100 * _acc(1, 0, 1, 1, 1)
    assert ref["fmnist"] == f"{statistics.fmean([a, b]):.1f} ± {statistics.stdev([a, b]):.1f}"
    app.selectbox(key="eval_res").select(32).run()
    knn = _frame(app, {"variant", "feature", "fmnist", "clipart"})
    beta = knn[knn.variant == "relational=rkd, c_max=128"].iloc[0]
    assert beta["clipart"] == f"{100 * _acc(2, 1, 1, 0, 1):.1f}"  # one seed: the value alone
    lin = _frame(app, {"variant", "feature", "dataset", "64px"})
    r = lin[(lin.variant == "relational=rkd, c_max=128") & (lin.dataset == "clipart")].iloc[0]
    assert r["64px"] == f"{100 * _acc(2, 1, 1, 1, 9):.1f}"
    fid = _frame(app, {"variant", "teacher", "cka"})
    assert len(fid) == 4 and (fid.cka == "0.700 ± 0.000").sum() == 2


def _colour_scales(spec: Any) -> list[dict[str, str]]:
    """label -> colour of every variant colour scale anywhere in a Vega-Lite spec (layers, facets, concats)."""
    found = []
    if isinstance(spec, dict):
        colour = spec.get("color")
        if isinstance(colour, dict) and colour.get("field") == "variant":
            found.append(dict(zip(colour["scale"]["domain"], colour["scale"]["range"])))
        for v in spec.values():
            found += _colour_scales(v)
    elif isinstance(spec, list):
        for v in spec:
            found += _colour_scales(v)
    return found


def _panels(spec: Any) -> list[dict]:
    """The innermost charts that hold data and a layer (the accuracy-vs-resolution panels, a teacher chart)."""
    if isinstance(spec, dict):
        if "layer" in spec and ("data" in spec or "datasets" in spec or "title" in spec):
            return [spec]
        return [p for v in spec.values() for p in _panels(v)]
    if isinstance(spec, list):
        return [p for v in spec for p in _panels(v)]
    return []


REFERENCE_LABELS = ["reference", "relational=rkd, c_max=128"]


def test_zero_shot_and_segmentation_tables_put_teachers_beside_the_student(app):
    heads = [h.value for h in app.subheader]
    assert {"Zero-shot top-1 (%)", "Segmentation mIoU (%)", "Segmentation pixel accuracy (%)"} <= set(heads)
    zs_at = heads.index("Zero-shot top-1 (%)")
    frames = [d.value for d in app.dataframe if {"variant", "feature", "dataset", "64px"} <= set(d.value.columns)]
    zs = next(
        f
        for f in frames
        if (f.variant == "teacher siglip").any() and set(f.feature) <= {"student:siglip", "teacher:siglip"}
    )
    fi = STUDENT_FEATURES.index("student:siglip")
    beta = zs[(zs.variant == "relational=rkd, c_max=128") & (zs.dataset == "clipart")].iloc[0]
    assert beta["64px"] == f"{100 * _acc(2, 1, fi, 1, 7):.1f}"
    teacher = zs[(zs.variant == "teacher siglip") & (zs.dataset == "fmnist")].iloc[0]
    assert teacher["64px"] == f"{100 * _acc(5, 0, 1, 1, 7):.1f}"  # teacher:siglip is the second teacher feature
    seg = next(f for f in frames if set(f.dataset) == {"voc"} and (f.feature == "student:native").any())
    ref = seg[(seg.variant == "reference") & (seg.feature == "student:native")].iloc[0]
    a, b = (100 * (_acc(i, 0, 2, 1, 5) - 0.4) for i in (0, 1))
    assert ref["64px"] == f"{statistics.fmean([a, b]):.1f} ± {statistics.stdev([a, b]):.1f}"
    assert zs_at < heads.index("Segmentation mIoU (%)")


def test_every_chart_gives_a_variant_the_palettes_colour(app):
    specs = _chart_specs(app)
    titles = json.dumps(specs)
    assert "Loss terms" in titles and "Expert load" in titles and "Sweep history" in titles
    scales = [m for s in specs for m in _colour_scales(s)]
    assert len(scales) >= 6  # loss curves, accuracy vs resolution (2 panels), 4 teacher charts
    palette = variant_colours([*REFERENCE_LABELS, "teacher dino", "teacher siglip"])
    for m in scales:  # the same variant has the same colour in every chart: the palette's
        assert all(palette[label] == colour for label, colour in m.items()), m
    assert palette["reference"] == REFERENCE and len(set(palette.values())) == len(palette)
    res = next(s for s in specs if "kNN accuracy vs resolution" in json.dumps(s.get("title", "")))
    legend = _colour_scales(res)[0]  # the legend: each variant once, then each teacher
    assert list(legend) == [*REFERENCE_LABELS, "teacher dino", "teacher siglip"]


def test_the_legend_follows_the_variant_selection(app):
    app.sidebar.multiselect(key=f"variants-{app.sidebar.selectbox(key='runs_dir').value}-False").unselect(
        REFERENCE_LABELS[1]
    ).run()
    assert not app.exception
    for m in (m for s in _chart_specs(app) for m in _colour_scales(s)):
        assert REFERENCE_LABELS[1] not in m and (not m or "reference" in m or "teacher dino" in m)
    res = next(s for s in _chart_specs(app) if "kNN accuracy vs resolution" in json.dumps(s.get("title", "")))
    assert list(_colour_scales(res)[0]) == ["reference", "teacher dino", "teacher siglip"]


def test_showing_sweep_trials_keeps_the_variant_selection(app):
    runs_dir = app.sidebar.selectbox(key="runs_dir").value
    app.sidebar.multiselect(key=f"variants-{runs_dir}-False").unselect(REFERENCE_LABELS[1]).run()
    app.sidebar.checkbox(key="sweeps").check().run()
    chosen = app.sidebar.multiselect(key=f"variants-{runs_dir}-True").value
    assert chosen == ["reference", "sweep demo-sweep/t0000"]  # the dropped variant stays dropped; the trial is new
    app.sidebar.checkbox(key="sweeps").uncheck().run()
    assert app.sidebar.multiselect(key=f"variants-{runs_dir}-False").value == ["reference"]


def _mean_std_span(values: dict[str, list[float]]) -> tuple[float, float]:
    """Lowest mean - std and highest mean + std over the groups (what a chart with error bars must show)."""
    lo = min(statistics.fmean(v) - (statistics.stdev(v) if len(v) > 1 else 0) for v in values.values())
    hi = max(statistics.fmean(v) + (statistics.stdev(v) if len(v) > 1 else 0) for v in values.values())
    return lo, hi


def _assert_fitted(domain: list[float], lo: float, hi: float) -> None:
    """The axis shows all of [lo, hi] and not much more: charts.MARGIN (8%) of the span or up to MIN_SPAN (2 points)
    around it, then out to whole points (+1)."""
    slack = max(0.08 * (hi - lo), 2.0) + 1
    assert domain[0] <= lo and domain[1] >= hi, (domain, lo, hi)
    assert domain[0] >= lo - slack and domain[1] <= hi + slack, (domain, lo, hi)


def test_axes_are_fitted_to_the_data_with_teachers_as_reference_lines(app, fixture_root):
    res = next(s for s in _chart_specs(app) if "kNN accuracy vs resolution" in json.dumps(s.get("title", "")))
    panels = _panels(res)
    assert [p["title"] for p in panels] == ["clipart", "fmnist"]  # one panel per dataset, wide
    for di, (dataset, panel) in enumerate(zip(("fmnist", "clipart")[::-1], panels)):
        di = DATASETS.index(dataset)
        groups: dict[str, list[float]] = {}
        for i, (_name, _seed, relational, _c) in enumerate(RUNS):  # student:ensemble (feature 1), k20 (index 1)
            for ri in range(len(RESOLUTIONS)):
                groups.setdefault(f"{relational}{ri}", []).append(100 * _acc(i, di, 1, ri, 1))
        teachers = fixture_root["teachers"]["knn"][dataset]
        for t in ("teacher:dino", "teacher:siglip"):
            for r in RESOLUTIONS:
                groups[f"{t}{r}"] = [100 * teachers[t][f"{r}px"]["k20"]]
        y = panel["layer"][0]["encoding"]["y"]["scale"]["domain"]
        _assert_fitted(y, *_mean_std_span(groups))
    bars = [s for s in _chart_specs(app) if "vs the student's" in json.dumps(s.get("title", ""))]
    for spec in bars:
        heading = spec["title"]
        dataset, teacher = heading["text"].split(",")[0], heading["text"].split("teacher ")[1].split(" ")[0]
        di = DATASETS.index(dataset)
        ref = 100 * fixture_root["teachers"]["knn"][dataset][f"teacher:{teacher}"]["64px"]["k20"]
        assert heading["subtitle"] == f"dashed: the teacher alone, {ref:.1f}"
        fi = STUDENT_FEATURES.index(f"student:{teacher}")
        groups = {"ref": [100 * _acc(i, di, fi, 1, 1) for i in (0, 1)], "beta": [100 * _acc(2, di, fi, 1, 1)]}
        groups["teacher"] = [ref]
        x = next(layer["encoding"]["x"]["scale"]["domain"] for layer in spec["layer"])
        assert all(layer["encoding"]["x"]["scale"]["domain"] == x for layer in spec["layer"])  # one x axis
        _assert_fitted(x, *_mean_std_span(groups))


def test_difference_to_the_reference_is_findings_welch_effect(app):
    from amoe_core.experiments.findings import Effect

    variants = _frame(app, {"variant", "seeds", "runs"}).set_index("variant")
    col = "Δ kNN avg vs reference (± s.e.)"
    assert variants.loc["reference", col] == ""
    # per-seed kNN avg over the datasets, student:ensemble, 64px, k20: alpha (runs 0, 1) and beta (run 2)
    avg = [statistics.fmean(_acc(i, di, 1, 1, 1) for di in range(len(DATASETS))) for i in range(3)]
    effect = Effect.of([avg[2]], avg[:2])  # one seed on beta's side: no standard error
    assert (
        variants.loc[REFERENCE_LABELS[1], col]
        == f"{effect.diff:+.1f} (one seed: no s.e.)"
        == "+15.0 (one seed: no s.e.)"
    )
    assert list(variants.columns[:2]) == ["kNN avg % (64px, k20)", col]  # the headline first


def test_teacher_vs_student_charts_are_sized_by_their_rows(app, fixture_root):
    cmp = _frame(app, {"variant", "dataset", "teacher", "student", "teacher alone"})
    row = cmp[(cmp.variant == "reference") & (cmp.dataset == "fmnist") & (cmp.teacher == "dino")].iloc[0]
    teacher = fixture_root["teachers"]["knn"]["fmnist"]["teacher:dino"]["64px"]["k20"]
    assert row["teacher alone"] == f"{100 * teacher:.1f}"
    bars = [s for s in _chart_specs(app) if "vs the student's" in json.dumps(s.get("title", ""))]
    assert len(bars) == 4  # 2 datasets x 2 teachers
    for spec in bars:  # 2 variants = 2 rows of ROW_PX for the plot area ("pad": axes come on top)
        assert spec["height"] == 2 * 22 and spec["autosize"]["type"] == "pad"
    app.selectbox(key="tvs_res").select(32).run()
    bars = [s for s in _chart_specs(app) if "vs the student's" in json.dumps(s.get("title", ""))]
    assert len(bars) == 4 and all(s["height"] == 2 * 22 and ", 32 px:" in s["title"]["text"] for s in bars)


def test_sweep_view_lists_every_trial_with_its_objective_name(app, fixture_root):
    import optuna

    trials = _frame(app, {"number", "value", "best so far"})
    study = optuna.load_study(study_name="demo-sweep", storage=fixture_root["storage"])
    assert len(trials) == len(study.trials) == 6
    assert trials["best so far"].iloc[-1] == pytest.approx(study.best_value)
    assert trials["value"].tolist() == pytest.approx([t.value for t in study.trials])
    history = next(s for s in _chart_specs(app) if s.get("title") == "Sweep history")
    top = history["vconcat"][0]["layer"][0]["encoding"]
    assert top["y"]["title"] == "kNN accuracy (fixture)"
    assert top["x"]["axis"]["format"] == "d" and top["x"]["axis"]["values"] == list(range(6))  # a tick per trial
    warnings = " ".join(w.value for w in app.warning)
    assert "only 6 finished trials" in warnings  # fANOVA on too few trials is flagged


def test_a_pruned_trials_intermediate_value_is_never_its_objective(app):
    app.selectbox(key="study").select("pruned-sweep").run()
    assert not app.exception
    trials = _frame(app, {"number", "value", "best so far"}).set_index("number")
    assert list(trials.state) == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    assert trials.value.isna().tolist() == [False, False, True, False, True]
    assert trials["best so far"].tolist()[-1] == pytest.approx(0.64)
    history = next(s for s in _chart_specs(app) if s.get("title") == "Sweep history")
    top, strip = history["vconcat"]
    domain = top["layer"][0]["encoding"]["y"]["scale"]["domain"]
    assert domain[0] > PRUNED_REPORT and 0.55 < domain[0] < 0.61 and 0.64 < domain[1] < 0.7, domain  # fitted
    assert strip["encoding"]["y"]["field"] == "state"  # pruned and failed trials: marked in their own rows


def test_every_tab_names_the_command_that_fills_it(tmp_path, monkeypatch):
    """On an empty runs directory, every view is a notice that names the `amoe` command that fills it."""
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("AMOE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("AMOE_CURATION_DIR", str(tmp_path / "no-curation"))
    monkeypatch.setenv("AMOE_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'none.db'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    infos = [i.value for i in at.info]
    assert len(infos) == 8, infos  # the page, then Runs, Live, Evaluation, Teachers, Sweep, Curation, PCA maps
    assert all("`amoe " in i for i in infos), infos
    assert not at.get("vega_lite_chart")


def test_images_and_curation(app):
    captions = [c for im in app.get("image") for c in im.captions]
    assert any(c.startswith("alpha:") for c in captions) and "cluster_sizes" in captions
    report = _frame(app, {"key", "value", "meaning"})
    assert dict(zip(report.key, report.value))["top_level_clusters_represented"] == "20"
    assert any("normalised entropy" in c.value for c in app.caption)  # "balance" is defined where it is shown


def test_live_view_follows_the_newest_run(app, fixture_root):
    newest = fixture_root["runs"] / "beta" / "dvclive" / "metrics.json"  # dvclive's summary: rewritten every step
    os.utime(newest, (newest.stat().st_atime, newest.stat().st_mtime + 10))
    app.run()
    assert app.selectbox(key="live_run").value == "beta"
    assert app.toggle(key="live_follow").value is True
    assert any("step 5 of 5" in m.value for m in app.markdown)


def test_changed_file_shows_on_rerun_and_missing_roots_are_explained(app, fixture_root, tmp_path, monkeypatch):
    ev = fixture_root["runs"] / "alpha" / "eval.json"
    data = json.loads(ev.read_text())
    data["knn"]["fmnist"]["student:ensemble"]["64px"]["k20"] = 0.123
    ev.write_text(json.dumps(data))
    os.utime(ev, (ev.stat().st_atime, ev.stat().st_mtime + 5))  # a later mtime, even on coarse clocks
    app.run()
    table = _frame(app, {"run", "loss.relational"}).set_index("run")
    assert table.loc["alpha", "kNN fmnist % (ensemble, 64px, k20)"] == 12.3

    # the page offers only the roots it was launched with: no text box to type a path or a storage URL into
    assert len(app.sidebar.text_input) == 0
    monkeypatch.setenv("AMOE_RUNS_DIR", os.pathsep.join([str(tmp_path / "none"), str(fixture_root["runs"])]))
    monkeypatch.setenv("AMOE_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'none.db'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="runs_dir").options == [str(tmp_path / "none"), str(fixture_root["runs"])]
    infos = " ".join(i.value for i in at.info)
    assert "No runs under" in infos and "No Optuna storage" in infos
    assert not (tmp_path / "none.db").exists()  # looking at the page never creates a database


def test_a_fresh_clone_offers_every_collected_ablation(tmp_path, monkeypatch):
    """Launched from a checkout with no AMOE_RUNS_DIR, the page offers distill.runs_dir, report.runs_dir and every
    other folder `amoe ablate` collected beside it (one holding a `_teachers` run), and nothing else."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for d in ("results/ablations/_teachers", "results/ablations-longtail/_teachers", "results/figures"):
        (tmp_path / d).mkdir(parents=True)
    for var in ("AMOE_RUNS_DIR", "AMOE_CURATION_DIR", "AMOE_OPTUNA_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    expected = ["runs", "results/ablations", "results/ablations-longtail"]
    assert at.sidebar.selectbox(key="runs_dir").options == expected
    assert not (tmp_path / "runs" / "optuna.db").exists()  # looking never creates the default storage
    # `amoe dashboard` hands the app the same directories, made absolute
    from amoe_core.config import load_params
    from amoe_core.dashboard import roots

    env = roots(load_params(tmp_path / "params.yaml"), None, None, None)
    assert env["AMOE_RUNS_DIR"].split(os.pathsep) == [str(tmp_path / d) for d in expected]


def test_images_outside_a_run_directory_are_never_shown(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "evil").mkdir(parents=True)
    (runs / "evil" / "params.yaml").write_text(yaml.safe_dump({"distill": {"run": "evil"}}))
    (runs / "evil" / "eval.json").write_text(json.dumps({"pca_maps": "../secret.png"}))
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(runs / "secret.png")
    monkeypatch.setenv("AMOE_RUNS_DIR", str(runs))
    monkeypatch.setenv("AMOE_CURATION_DIR", str(tmp_path / "no-curation"))  # not the checkout's (its plots are images)
    monkeypatch.setenv("AMOE_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'none.db'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert not at.get("image") and any("No pca_maps.png" in i.value for i in at.info)


README_ROWS = {  # README's results table: its row -> docs/RESULTS.md's variant label
    "student, reference": "reference",
    "no relational term": "relational=none",
    "symmetric RKD": "relational=rkd",
    "random selection of the same size": "selection=random",
    "fixed number of images per step": "mode=fixed",
}


def _md_rows(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the markdown table whose header starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start:]]
    end = next((i for i, line in enumerate(lines[start:]) if not line.startswith("|")), len(lines) - start)
    return cells[0], cells[2:end]


def test_readme_numbers_and_the_screenshots_source_agree_with_results_md():
    """README's results table, the dashboard's variants table on results/ablations (what scripts/screenshots
    shows) and docs/RESULTS.md (`amoe report` on the same runs) give the same numbers."""
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    header, rows = _md_rows(results, "| model |")
    report = {r[0]: dict(zip(header, r)) for r in rows}
    _, tput = _md_rows(results, "| variant | tokens/s |")
    tokens = {r[0]: r[1] for r in tput}
    readme_header, readme_rows = _md_rows((ROOT / "README.md").read_text(), "| model | fashion-mnist |")
    assert readme_header[:4] == ["model", "fashion-mnist", "clip-art (10 classes)", "average"]
    dash = loaders.variants_table(student_runs(ROOT / "results" / "ablations"), ROOT / "results" / "ablations")
    dash = dash.set_index("variant")
    seen = set()
    for row in readme_rows:
        if "teacher" in row[0]:
            teacher = "dino" if row[0].startswith("DINO") else "siglip"
            r = report[f"teacher `{teacher}`"]
            assert row[1:4] == [r["fmnist kNN"], r["clipart kNN"], r["kNN avg"]], row
            continue
        label = next(v for k, v in README_ROWS.items() if row[0].startswith(k))
        seen.add(label)
        r = report[f"student ({label})"]
        assert row[1:4] == [r["fmnist kNN"], r["clipart kNN"], r["kNN avg"]], row
        assert row[4] == tokens[label].split(" ± ")[0], row  # README gives the mean throughput
        d = dash.loc[label]
        assert [d["kNN fmnist % (ensemble, 64px, k20)"], d["kNN clipart % (ensemble, 64px, k20)"]] == row[1:3]
        assert d["kNN avg % (64px, k20)"] == row[3] and d["tokens/s"] == tokens[label]
    assert seen == set(README_ROWS.values())


def test_a_damaged_eval_json_is_one_warning_and_the_other_runs_still_show(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    _write_run(runs / "good", 0, "good", 0, "arkd", 256, rng)
    _write_run(runs / "torn", 1, "torn", 1, "arkd", 256, rng)
    (runs / "torn" / "eval.json").write_text('{"knn": {"fmnist": {')  # a killed writer's half file
    monkeypatch.setenv("AMOE_RUNS_DIR", str(runs))
    monkeypatch.setenv("AMOE_CURATION_DIR", str(tmp_path / "no-curation"))
    monkeypatch.setenv("AMOE_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'none.db'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    damaged = [w.value for w in at.warning if "eval.json is damaged" in w.value]
    assert len(damaged) == 1 and damaged[0].startswith("torn/eval.json is damaged (JSONDecodeError")
    table = _frame(at, {"run", "variant"}).set_index("run")
    assert set(table.index) == {"good", "torn"}
    knn = table.filter(like="kNN")
    assert knn.loc["good"].notna().all() and knn.loc["torn"].isna().all()
