"""The Streamlit dashboard under streamlit.testing.v1.AppTest on fixture runs written here (no stage runs)."""

from __future__ import annotations

import json
import os
import statistics
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parent.parent / "dashboards" / "app.py")
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
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 6):
            rec = {
                "step": step,
                "lr": 1e-3,
                "tokens_per_s": 1000.0 * (i + 1) + step,
                "loss/total": 10.0 / step + i,
                "loss/dino/summary": 1.0 / step,
                "loss/siglip/patch": 2.0 / step,
                "loss/relational": 0.5 / step,
                "expert_load": (rng.dirichlet(np.ones(4), size=3)).tolist(),
            }
            f.write(json.dumps(rec) + "\n")
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
    return {"runs": runs, "curation": cur, "storage": storage, "teachers": teachers}  # type: ignore[dict-item]


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
    tps = [1003.5, 2003.5]
    assert ref["tokens/s"] == f"{statistics.fmean(tps):.0f} ± {statistics.stdev(tps):.0f}"
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
    assert table.loc["beta", "tokens/s (median)"] == pytest.approx(3003.5)  # median of steps 2-5 (warm-up cut)
    col = "kNN clipart % (ensemble, 64px, k20)"  # student:ensemble at main_resolution 64px, k20
    assert table.loc["beta", col] == pytest.approx(100 * _acc(2, 1, 1, 1, 1))
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


def test_charts_colour_by_variant_with_one_legend_entry_each(app):
    specs = _chart_specs(app)
    titles = json.dumps(specs)
    assert "Loss terms" in titles and "Expert load" in titles and "Sweep history" in titles
    res = next(s for s in specs if "kNN accuracy vs resolution" in json.dumps(s.get("title", "")))
    colour = res["spec"]["layer"][0]["encoding"]["color"]
    # the colour scale's domain lists each variant once, then each teacher: one legend entry per line
    assert colour["field"] == "variant"
    assert colour["scale"]["domain"] == ["reference", "relational=rkd, c_max=128", "teacher dino", "teacher siglip"]
    assert set(res["facet"]) == {"column", "row"}  # dataset x feature panels
    # the same variant keeps its colour on the loss chart: same domain, same scheme
    loss = next(s for s in specs if s.get("title") == "Loss terms")
    assert loss["spec"]["encoding"]["color"]["scale"]["domain"][:2] == colour["scale"]["domain"][:2]


def test_teacher_vs_student_bars_are_sized_by_their_rows(app, fixture_root):
    cmp = _frame(app, {"variant", "dataset", "teacher", "student", "teacher alone"})
    row = cmp[(cmp.variant == "reference") & (cmp.dataset == "fmnist") & (cmp.teacher == "dino")].iloc[0]
    teacher = fixture_root["teachers"]["knn"]["fmnist"]["teacher:dino"]["64px"]["k20"]
    assert row["teacher alone"] == pytest.approx(round(100 * teacher, 1))
    bars = [s for s in _chart_specs(app) if "vs the student's" in json.dumps(s.get("title", ""))]
    assert len(bars) == 4  # 2 datasets x 2 teachers
    for spec in bars:  # teacher + 2 variants = 3 rows of ROW_PX for the plot area ("pad": axes come on top)
        assert spec["height"] == 3 * 22 and spec["autosize"]["type"] == "pad"
    app.selectbox(key="tvs_res").select(32).run()
    bars = [s for s in _chart_specs(app) if "vs the student's" in json.dumps(s.get("title", ""))]
    assert len(bars) == 4 and all(s["height"] == 3 * 22 and ", 32 px:" in s["title"] for s in bars)


def test_sweep_view_lists_every_trial_with_its_objective_name(app, fixture_root):
    import optuna

    trials = _frame(app, {"number", "value", "best so far"})
    study = optuna.load_study(study_name="demo-sweep", storage=fixture_root["storage"])
    assert len(trials) == len(study.trials) == 6
    assert trials["best so far"].iloc[-1] == pytest.approx(study.best_value)
    assert trials["value"].tolist() == pytest.approx([t.value for t in study.trials])
    history = next(s for s in _chart_specs(app) if s.get("title") == "Sweep history")
    assert history["layer"][0]["encoding"]["y"]["title"] == "kNN accuracy (fixture)"
    assert history["layer"][0]["encoding"]["x"]["axis"]["format"] == "d"  # whole trial numbers
    warnings = " ".join(w.value for w in app.warning)
    assert "only 6 finished trials" in warnings  # fANOVA on too few trials is flagged


def test_images_and_curation(app):
    captions = [c for im in app.get("image") for c in im.captions]
    assert any(c.startswith("alpha:") for c in captions) and "cluster_sizes" in captions
    report = _frame(app, {"key", "value", "meaning"})
    assert dict(zip(report.key, report.value))["top_level_clusters_represented"] == "20"
    assert any("normalised entropy" in c.value for c in app.caption)  # "balance" is defined where it is shown


def test_live_view_follows_the_newest_run(app, fixture_root):
    newest = fixture_root["runs"] / "beta" / "metrics.jsonl"
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
    assert table.loc["alpha", "kNN fmnist % (ensemble, 64px, k20)"] == pytest.approx(12.3)

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
