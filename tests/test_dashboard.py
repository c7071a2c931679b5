"""The Streamlit dashboard under streamlit.testing.v1.AppTest on fixture runs written here (no stage runs)."""

from __future__ import annotations

import json
import os
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
        "fidelity": {
            t: {"summary_cos": 0.9, "patch_cos": 0.8, "cka": 0.7, "spearman": 0.6} for t in ("dino", "siglip")
        },
        "pca_maps": "pca_maps.png",
    }


STUDENT_FEATURES = ["student:dino", "student:ensemble", "student:native", "student:siglip"]


def write_fixture(root: Path) -> dict[str, Path]:
    """Two runs (differing in loss.relational and packing.c_max), teacher baselines, curation outputs, a study."""
    runs = root / "runs"
    rng = np.random.default_rng(0)
    for i, (name, relational, c_max) in enumerate([("alpha", "arkd", 256), ("beta", "rkd", 128)]):
        run = runs / name
        run.mkdir(parents=True)
        params = {
            "seed": 0,
            "packing": {"c_max": c_max, "max_images_per_seq": 16},
            "loss": {"relational": relational, "relational_weight": 1.0},
            "distill": {"run": name, "steps": 5},
            "evaluate": {"main_resolution": 64},
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
    }
    (cur / "selection" / "report.json").write_text(json.dumps(report))
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(cur / "plots" / "cluster_sizes.png")

    import optuna

    storage = f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(
        study_name="demo-sweep", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
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


def test_runs_table_holds_differing_params_and_key_metrics(app):
    table = _frame(app, {"run", "loss.relational"}).set_index("run")
    assert list(table.index) == ["alpha", "beta"]
    # only params that differ are shown: seed and relational_weight are identical in both runs
    assert {"loss.relational", "packing.c_max", "distill.run"} <= set(table.columns)
    assert "seed" not in table.columns and "loss.relational_weight" not in table.columns
    assert table.loc["beta", "loss.relational"] == "rkd" and table.loc["alpha", "packing.c_max"] == 256
    assert table.loc["alpha", "steps"] == 5
    assert table.loc["beta", "loss/total (last)"] == pytest.approx(10.0 / 5 + 1)
    assert table.loc["beta", "tokens/s (median)"] == pytest.approx(2003.0)
    # headline kNN: student:ensemble (feature index 1) at main_resolution 64px (index 1), k20 (index 1)
    col = "kNN clipart (ensemble, 64px, k20)"
    assert table.loc["beta", col] == pytest.approx(_acc(1, 1, 1, 1, 1))


def test_eval_tables_and_charts(app):
    knn = _frame(app, {"run", "dataset", "feature", "k=20"})
    # default resolution choice is the first (32px); every student feature of both runs is listed
    assert len(knn) == 2 * len(DATASETS) * len(STUDENT_FEATURES)
    row = knn[(knn.run == "alpha") & (knn.dataset == "fmnist") & (knn.feature == "student:native")].iloc[0]
    assert row["k=100"] == pytest.approx(_acc(0, 0, 2, 0, 2))
    lin = _frame(app, {"run", "dataset", "feature", "112px"})
    r = lin[(lin.run == "beta") & (lin.dataset == "clipart") & (lin.feature == "student:siglip")].iloc[0]
    assert r["112px"] == pytest.approx(_acc(1, 1, 3, 2, 9))
    fid = _frame(app, {"run", "teacher", "cka"})
    assert len(fid) == 4 and (fid.cka == 0.7).all()
    specs = [json.loads(c.proto.spec) for c in app.get("vega_lite_chart")]
    titles = json.dumps(specs)
    # loss curves, expert load per run, accuracy vs resolution, teacher vs student, sweep history, curation
    assert "Loss terms" in titles and "Expert load (alpha)" in titles and "Expert load (beta)" in titles
    assert "Sweep history" in titles and "source shares" in titles
    assert any("resolution (px)" in json.dumps(s) for s in specs)


def test_teacher_vs_student_delta(app, fixture_root):
    cmp = _frame(app, {"accuracy_student", "accuracy_teacher", "delta"})
    # k=20 at the first resolution (32px); student:dino is feature 0 of the runs, teacher:dino feature 0 of teachers
    row = cmp[(cmp.run == "alpha") & (cmp.dataset == "fmnist") & (cmp.teacher == "dino")].iloc[0]
    teacher = fixture_root["teachers"]["knn"]["fmnist"]["teacher:dino"]["32px"]["k20"]
    assert row.accuracy_teacher == pytest.approx(teacher)
    assert row.delta == pytest.approx(_acc(0, 0, 0, 0, 1) - teacher)
    assert set(cmp.teacher) == {"dino", "siglip"}


def test_sweep_view_lists_every_trial(app, fixture_root):
    import optuna

    trials = _frame(app, {"number", "value", "best so far"})
    study = optuna.load_study(study_name="demo-sweep", storage=fixture_root["storage"])
    assert len(trials) == len(study.trials) == 6
    assert trials["best so far"].iloc[-1] == pytest.approx(study.best_value)
    assert trials["value"].tolist() == pytest.approx([t.value for t in study.trials])


def test_images_and_curation(app):
    captions = [c for im in app.get("image") for c in im.captions]
    assert any(c.startswith("alpha:") for c in captions) and "cluster_sizes" in captions
    report = _frame(app, {"key", "value"})
    assert dict(zip(report.key, report.value))["top_level_clusters_represented"] == "20"


def test_changed_file_shows_on_rerun_and_missing_roots_are_explained(app, fixture_root, tmp_path):
    ev = fixture_root["runs"] / "alpha" / "eval.json"
    data = json.loads(ev.read_text())
    data["knn"]["fmnist"]["student:ensemble"]["64px"]["k20"] = 0.123
    ev.write_text(json.dumps(data))
    os.utime(ev, (ev.stat().st_atime, ev.stat().st_mtime + 5))  # a later mtime, even on coarse clocks
    app.run()
    table = _frame(app, {"run", "loss.relational"}).set_index("run")
    assert table.loc["alpha", "kNN fmnist (ensemble, 64px, k20)"] == pytest.approx(0.123)

    app.sidebar.text_input[0].set_value(str(tmp_path / "none")).run()
    app.sidebar.text_input[2].set_value(f"sqlite:///{tmp_path / 'none.db'}").run()
    assert not app.exception
    infos = " ".join(i.value for i in app.info)
    assert "No runs under" in infos and "No Optuna storage" in infos
    assert not (tmp_path / "none.db").exists()  # looking at the page never creates a database
