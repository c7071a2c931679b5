"""`amoe sweep`: parallel workers lose no trial, the objective plumbing, pruning, export, optuna-dashboard."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml

from amoe_core.cli import main
from amoe_core.config import load_params
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.overrides import with_overrides
from amoe_core.sweep import objective as objective_mod
from amoe_core.sweep import search, space
from amoe_core.train.live import LiveLog


def expected_value(values: dict) -> float:
    """The synthetic objective's formula, written against the trial's sampled values."""
    return -((math.log2(values["packing.c_max"]) - 8) ** 2) - math.log(values["loss.relational_weight"]) ** 2


def synthetic(trial: optuna.Trial, params) -> float:
    """A cheap objective computed from the *resolved params* (so it checks that the trial's overrides were applied);
    it leaves one marker file per trial so the test can see which process ran what."""
    value = -((math.log2(params.packing.c_max) - 8) ** 2) - math.log(params.loss.relational_weight) ** 2
    for step in range(3):
        trial.report(value - 1.0 / (step + 1), step)
    marker = Path(os.environ["AMOE_TEST_SWEEP_MARKERS"]) / f"{trial.number}.json"
    run = {"pid": os.getpid(), "run": params.distill.run, "runs_dir": str(params.distill.runs_dir)}
    marker.write_text(json.dumps({**run, "steps": params.distill.steps}))
    return value


def _params(tmp_path: Path, *extra: str):
    return load_params(
        None,
        [
            f"sweep.storage=sqlite:///{tmp_path / 'optuna.db'}",
            f"sweep.best_out={tmp_path / 'best.yaml'}",
            f"distill.runs_dir={tmp_path / 'runs'}",
            "sweep.search=[packing.c_max, loss.relational_weight, loss.relational, teachers.1.patch_weight]",
            *extra,
        ],
    )


def test_two_parallel_workers_lose_no_trial_and_export_applies(tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("AMOE_TEST_SWEEP_MARKERS", str(markers))
    params = _params(
        tmp_path,
        "sweep.n_trials=6",
        "sweep.workers=2",
        "sweep.objective=test_sweep:synthetic",
        "sweep.token_budget=20480",
        "sweep.study=par",
    )
    summary = search.run(params)

    study = optuna.load_study(study_name="par", storage=params.sweep.storage)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and summary["COMPLETE"] == 6
    runs = [json.loads((markers / f"{t.number}.json").read_text()) for t in trials]
    assert len({r["pid"] for r in runs}) == 2 and os.getpid() not in {r["pid"] for r in runs}  # two real workers
    for t, r in zip(trials, runs):
        assert t.value == pytest.approx(expected_value(t.params))  # the params the objective saw were the trial's
        assert r["run"] == f"t{t.number:04d}" and r["runs_dir"] == str(tmp_path / "runs" / "_sweep" / "par")
        assert r["steps"] == 20480 // (t.params["packing.c_max"] * params.packing.seqs_per_step)  # fixed compute
        assert len(t.intermediate_values) == 3

    # the exported best trial applies with load_params (the same overrides `dvc exp run -S` takes)
    best = search.read_best(params.sweep.best_out)
    assert yaml.safe_load(params.sweep.best_out.read_text())["trial"] == study.best_trial.number
    applied = load_params(None, best)
    bp = study.best_trial.params
    assert applied.packing.c_max == bp["packing.c_max"]
    assert applied.loss.relational_weight == bp["loss.relational_weight"]  # floats survive the YAML round trip
    assert applied.loss.relational == bp["loss.relational"]
    assert applied.teachers[1].patch_weight == bp["teachers.1.patch_weight"]
    assert "dvc exp run -S 'packing.c_max=" in params.sweep.best_out.read_text()

    # a second `amoe sweep` adds trials to the same study instead of starting over
    search.run(params.model_copy(update={"sweep": params.sweep.model_copy(update={"n_trials": 2, "workers": 1})}))
    assert len(optuna.load_study(study_name="par", storage=params.sweep.storage).trials) == 8


def _fake_stages(monkeypatch, feature_loss: dict[str, float], accuracy: float):
    """Stand-in distill/evaluate stages writing the files the real ones write (dvclive curves, eval.json)."""
    from amoe_core.tracking.runs import RunDir

    def distill(params):
        logging.getLogger("amoe_core.train.distill").info("fitting PHI-S")  # what a real stage says at INFO
        run = RunDir.create(params.distill.runs_dir, params.distill.run)
        loss = feature_loss[params.loss.relational]
        live = LiveLog(run.live_dir, resume=False)
        for step in range(1, params.distill.steps + 1):
            live.log(
                {
                    "step": step,
                    "loss/total": 100.0,
                    "loss/dino/summary": loss,
                    "loss/dino/patch": loss,
                    "loss/relational": 50.0,
                }
            )
        live.close()

    def evaluate(params, run):
        acc = {"k20": accuracy + feature_loss[params.loss.relational] * -0.01}
        ev = {
            "knn": {
                d: {"student:ensemble": {"64px": acc}, "student:native": {"64px": {"k20": 0.0}}}
                for d in ("fmnist", "clipart")
            }
        }
        RunDir(params.distill.runs_dir / run).write_eval(ev)

    stages = {"distill": distill, "evaluate": evaluate}
    monkeypatch.setattr(objective_mod, "stage_function", lambda name: stages[name])


def test_distill_knn_objective_scores_and_prunes(tmp_path, monkeypatch):
    # arkd trains well, none badly: once 3 trials completed, a `none` trial's feature loss is above the median
    _fake_stages(monkeypatch, {"arkd": 0.1, "rkd": 0.2, "none": 5.0}, accuracy=0.8)
    params = _params(tmp_path, "sweep.search=[loss.relational]", "sweep.steps=4", "sweep.study=real")
    study = search.load_study(params)
    for relational in ("arkd", "arkd", "rkd", "none", "arkd"):
        study.enqueue_trial({"loss.relational": relational})
    study.optimize(search.make_objective(params), n_trials=5)
    states = [(t.params["loss.relational"], t.state.name) for t in study.trials]
    assert states == [
        ("arkd", "COMPLETE"),
        ("arkd", "COMPLETE"),
        ("rkd", "COMPLETE"),
        ("none", "PRUNED"),
        ("arkd", "COMPLETE"),
    ]
    t0 = study.trials[0]
    assert t0.value == pytest.approx(0.8 - 0.001)  # mean over the two datasets of student:ensemble k20 at 64px
    assert t0.intermediate_values == {s: pytest.approx(-0.1) for s in range(1, 5)}  # -(mean of feature terms)
    trials = tmp_path / "runs" / "_sweep" / "real"  # trial runs stay out of runs/ (and out of list_runs)
    assert (trials / "t0000" / "eval.json").exists()
    assert not (trials / "t0003" / "eval.json").exists()  # pruned before the evaluation
    assert not list((tmp_path / "runs").glob("*/params.yaml")) and not list((tmp_path / "runs").glob("real*"))
    assert t0.user_attrs["overrides"] == ["loss.relational=arkd"]
    assert t0.user_attrs["run_dir"] == str(trials / "t0000")
    # the objective is named, and the intermediate values are explained where optuna-dashboard shows them
    assert study.metric_names == ["kNN accuracy (student:ensemble, 64px, k=20, mean over datasets)"]
    assert "negated mean feature loss" in study.user_attrs["intermediate_values"]


def test_one_line_per_finished_trial_and_no_optuna_chatter(tmp_path, monkeypatch, caplog):
    _fake_stages(monkeypatch, {"arkd": 0.1, "rkd": 0.2, "none": 5.0}, accuracy=0.8)
    params = _params(tmp_path, "sweep.search=[loss.relational]", "sweep.steps=2", "sweep.study=lines")
    search.load_study(params)  # the study exists: joining it must not print "Using an existing study"
    with caplog.at_level("INFO"):
        search.work(params.model_dump(mode="json"), 3, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "amoe.sweep"]
    assert len(lines) == 3 and all(line.startswith(f"trial {i}: kNN accuracy") for i, line in enumerate(lines))
    assert str(tmp_path / "runs" / "_sweep" / "lines" / "t0002") in lines[2]
    assert not [r for r in caplog.records if r.name.startswith("optuna")]
    assert not [r for r in caplog.records if r.name.startswith("amoe_core")]  # the stages' INFO lines stay quiet
    with caplog.at_level("DEBUG"):  # -v shows them again
        search.work(params.model_dump(mode="json"), 1, 0)
    assert [r for r in caplog.records if r.name == "amoe_core.train.distill"]


def test_missing_inputs_stop_the_sweep_before_any_trial(tmp_path, monkeypatch, capsys):
    """On a fresh clone (no shards yet) `amoe sweep` exits 2 at once naming the input; the study gains nothing."""
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="kept", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    args = ["sweep", "-S", f"sweep.storage={storage}", "-S", "sweep.study=kept", "-S", "sweep.n_trials=2"]
    assert main([*args, "-S", f"distill.shards={tmp_path / 'no-shards'}"]) == 2
    assert "distill.shards" in capsys.readouterr().err
    (tmp_path / "shards").mkdir()
    assert main([*args, "-S", "distill.shards=shards", "-S", "distill.selection=none.parquet"]) == 2
    assert "distill.selection" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="kept", storage=storage).trials) == 1


def test_bad_sweep_settings_fail_with_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="sweep.search: unknown dimension.*packing.c_max"):
        search.run(_params(tmp_path, "sweep.search=[packing.nope]"))
    with pytest.raises(ConfigError, match="sweep.storage = 'runs/optuna.db': expected an RDB URL"):
        search.open_storage(_params(tmp_path, "sweep.storage=runs/optuna.db").sweep)
    with pytest.raises(ConfigError, match="sweep.objective = 'nowhere:fn': cannot import"):
        search.run(_params(tmp_path, "sweep.objective=nowhere:fn"))
    ev = {"knn": {"fmnist": {"student:native": {"64px": {"k20": 0.5}}}}}
    with pytest.raises(ConfigError, match=r"sweep.feature = 'student:ensemble'.*\['student:native'\]"):
        objective_mod.eval_score(ev, "knn", "student:ensemble", 64, 20)
    with pytest.raises(AmoeError, match="no completed trial"):
        search.best_overrides(search.load_study(_params(tmp_path, "sweep.study=empty")))


def test_space_is_always_valid_and_round_trips(tmp_path):
    """Every point of the full space (all dimensions) validates, and its overrides parse back to the same values."""
    params = load_params(None, [f"sweep.storage=sqlite:///{tmp_path / 'o.db'}"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        overrides = space.suggest(trial, params)
        p = with_overrides(params, overrides)
        assert p.packing.max_tokens <= p.packing.c_max and p.packing.min_tokens <= p.packing.max_tokens
        assert p.teachers[0].summary_weight == trial.params["teachers.0.summary_weight"]
        study.tell(trial, 0.0)
    assert len(space.dimensions(params)) == 7 + 2 * len(params.teachers)


def test_optuna_dashboard_lists_the_study(tmp_path):
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import wsgi

    storage = f"sqlite:///{tmp_path / 'dash.db'}"
    study = optuna.create_study(study_name="shown", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    app = wsgi(storage)
    status: list[str] = []
    environ = {"PATH_INFO": "/api/studies"}
    setup_testing_defaults(environ)
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), body[:2000]
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["shown"]
