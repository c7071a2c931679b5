"""`amoe ablate`: the experiment plan, and collecting run records out of real DVC experiment commits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amoe_core.config import load_params
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.experiments import ablations
from amoe_core.experiments.report import _measured_on
from amoe_core.tracking.runs import RunDir, summarize_training
from dashboards import loaders

REPO = Path(__file__).resolve().parents[1]

# A one-stage pipeline that writes a run directory like `amoe distill` + `amoe evaluate` do.
STAGE = """
import json, pathlib, sys, yaml
from amoe_core.train.live import LiveLog
p = yaml.safe_load(open("params.yaml"))
run = pathlib.Path("runs") / sys.argv[1]; (run / "checkpoints").mkdir(parents=True, exist_ok=True)
(run / "params.yaml").write_text(yaml.safe_dump(p))
(run / "eval.json").write_text(json.dumps({"knn": p["a"] / 10}))
(run / "train.json").write_text(json.dumps({"tokens_per_s": 100.0}))
live = LiveLog(run / "dvclive", resume=False)  # the curves, as `amoe distill` writes them
for step in (1, 2, 3):
    live.log({"step": step, "loss/total": p["a"] / step, "expert_load": [[0.5, 0.5]]})
live.close()
(run / "dvclive" / "report.html").write_text("")  # not a record: stays out of git
(run / "checkpoints" / "w.bin").write_bytes(b"x")
teachers = pathlib.Path("runs/_teachers"); teachers.mkdir(parents=True, exist_ok=True)
(teachers / "eval.json").write_text(json.dumps({"knn": 1}))
sel = pathlib.Path("sel"); sel.mkdir(exist_ok=True)  # the curation: a DVC-cached output, as sample.out is
(sel / "report.json").write_text(json.dumps({"target": p["a"]}))
"""
DVC_YAML = """
stages:
  train:
    foreach: [balanced]
    do:
      cmd: python stage.py ${item}
      deps: [stage.py]
      params: [a]
      outs:
        - sel
        - runs/${item}/checkpoints
        - runs/${item}/params.yaml:
            cache: false
        - runs/${item}/dvclive/plots/metrics:
            cache: false
      metrics:
        - runs/${item}/eval.json:
            cache: false
        - runs/${item}/train.json:
            cache: false
        - runs/_teachers/eval.json:
            cache: false
"""


def _sh(*cmd: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / ".gitignore", root / ".gitignore")  # the project's rules for what of runs/ is versioned
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("a: 1\n")
    _sh("git", "init", "-q", "-b", "main", cwd=root)
    _sh("git", "config", "user.email", "t@example.com", cwd=root)
    _sh("git", "config", "user.name", "t", cwd=root)
    _sh("dvc", "init", "-q", cwd=root)
    _sh("git", "commit", "-qm", "dvc init", cwd=root)  # dvclive (in the stage) needs a git repo with a commit
    _sh("dvc", "repro", "-q", cwd=root)
    stale = root / "runs" / "random"  # an earlier demo's records, committed: no experiment below rewrites them
    stale.mkdir()
    (stale / "params.yaml").write_text("a: 0\n")
    (stale / "eval.json").write_text(json.dumps({"knn": 0.0}))
    _sh("git", "add", "-A", cwd=root)
    _sh("git", "commit", "-qm", "baseline", cwd=root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return root


def test_plan_is_seed_major_and_only_the_seed_changes_between_repeats() -> None:
    exps = ablations.plan(3, base={"distill.steps": "900", "loss.relational": "rkd"})
    assert [e.name for e in exps[:6]] == ["ref-s0", "loss-none-s0", "loss-rkd-s0", "batching-fixed-s0", "data-1000-s0", "data-2000-s0"]  # fmt: skip
    assert len(exps) == 19 and len({e.name for e in exps}) == 19
    # the data-scaling points: one seed each, the whole pipeline (a new selection, students on both); the long-tail
    # pool's data finding: three seeds, and its own scaling points
    assert [e.name for e in exps if e.name.startswith("data")] == [
        "data-1000-s0", "data-2000-s0", "data-longtail-s0", "data-longtail-1000-s0", "data-longtail-2000-s0",
        "data-longtail-s1", "data-longtail-s2",
    ]  # fmt: skip
    by_name = {e.name: e for e in exps}
    lt = by_name["data-longtail-1000-s0"]
    assert (
        lt.target is None and lt.overrides["demo_pool.long_tail"] == "true" and lt.overrides["sample.target"] == "1000"
    )
    assert lt.overrides["evaluate.class_frequencies"] == "data/demo/concept_frequencies.json"
    # the pool rebuild in a temporary workspace (no data/ there) reads the launching checkout's .deb cache
    assert "demo_pool.debs" not in lt.overrides and "demo_pool.debs" not in by_name["data-1000-s0"].overrides
    with_debs = {e.name: e for e in ablations.plan(1, ["data-longtail", "ref"], debs=Path("data/debs"))}
    assert with_debs["data-longtail-s0"].overrides["demo_pool.debs"] == str(Path("data/debs").resolve())
    assert "demo_pool.debs" not in with_debs["ref-s0"].overrides
    by_name = {e.name: e for e in exps}
    assert by_name["data-2000-s0"].target is None and by_name["data-2000-s0"].overrides["sample.target"] == "2000"
    # the base overrides reach every experiment, under the variant's own setting
    assert by_name["loss-none-s2"].queue_command() == [
        "dvc", "exp", "run", "--queue", "-n", "loss-none-s2",
        "-S", "distill.steps=900", "-S", "loss.relational=none", "-S", "distill.seed=2", "evaluate@balanced",
    ]  # fmt: skip
    # the reference experiment reproduces the whole pipeline: students on both selections (the data ablation)
    assert by_name["ref-s1"].target is None
    assert by_name["ref-s1"].overrides == {"distill.steps": "900", "loss.relational": "rkd", "distill.seed": "1"}
    assert ablations.plan(1, ["ref"])[0].overrides == {"distill.seed": "0"}
    with pytest.raises(AmoeError, match="unknown ablation variant.*'loss-l2'.*known: ref, loss-none"):
        ablations.plan(1, ["loss-l2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [("distill.stepz=900", "unknown key distill.stepz"), ("distill.steps=0", "invalid distill.steps = 0")],
)
def test_a_bad_ablate_override_stops_before_anything_is_queued(repo: Path, override: str, message: str) -> None:
    params = load_params(REPO / "params.yaml", [f"ablate.overrides=[{override}]"])
    with pytest.raises(ConfigError, match=rf"ablate.overrides \['{override}'\]: {message}"):
        ablations.run(params)
    assert "Queued" not in _sh("dvc", "queue", "status", cwd=repo)


def test_collect_copies_each_experiments_records_from_its_commit(repo: Path) -> None:
    _sh("dvc", "exp", "run", "-q", "-n", "e2", "-S", "a=2", "train@balanced", cwd=repo)
    _sh("dvc", "exp", "run", "-q", "-n", "e3", "-S", "a=3", "train@balanced", cwd=repo)
    _sh("dvc", "exp", "run", "-q", "-n", "e4", "-S", "a=4", cwd=repo)  # the whole pipeline
    assert set(ablations.experiment_refs()) == {"e2", "e3", "e4"}
    out = repo / "results"
    e2, e3 = (ablations.Experiment(n, {"a": a}, "train@balanced") for n, a in (("e2", "2"), ("e3", "3")))
    e4 = ablations.Experiment("e4", {"a": "4"}, None)
    runs = ablations.collect([e2, e3, e4], out, selection=Path("sel"))
    # only the run each experiment wrote: the committed runs/random in their commits is the baseline's, not theirs
    # (a whole-pipeline experiment writes every run)
    assert runs == [out / "e2-balanced", out / "e3-balanced", out / "e4-balanced", out / "e4-random"]
    assert sorted(p.name for p in out.glob("[!.]*")) == [
        "_curation", "_teachers", "e2-balanced", "e3-balanced", "e4-balanced", "e4-random", "experiments.json"
    ]  # fmt: skip
    # the curation of an experiment that ran the whole pipeline, as its commit's DVC output holds it (a one-stage
    # experiment's curation is its baseline's: not collected)
    assert [p.name for p in (out / "_curation").iterdir()] == ["e4.json"]
    assert json.loads((out / "_curation" / "e4.json").read_text()) == {"target": 4}
    for name, a in (("e2", 2), ("e3", 3)):  # each experiment's own records, not the workspace's
        run = out / f"{name}-balanced"
        assert json.loads((run / "eval.json").read_text()) == {"knn": a / 10}
        assert yaml.safe_load((run / "params.yaml").read_text()) == {"a": a}
        assert json.loads((run / "train.json").read_text()) == {"tokens_per_s": 100.0}
        assert not (run / "dvclive" / "report.html").exists() and not (run / "checkpoints").exists()
        # the curves came along: the dashboard's loss chart and the report's summary read them like a run's
        steps = RunDir(run).metrics()
        assert [(r["step"], r["loss/total"]) for r in steps] == [(1, a), (2, a / 2), (3, a / 3)]
        assert steps[-1]["expert_load"] == [[0.5, 0.5]]
        assert list(loaders.loss_curves(RunDir(run), run.name).value) == [a, a / 2, a / 3]
        assert summarize_training(steps)["loss"] == {"total": a / 3}
        tsv = run.relative_to(repo) / "dvclive" / "plots" / "metrics" / "loss" / "total.tsv"
        assert subprocess.run(["git", "check-ignore", "-q", str(tsv)], cwd=repo).returncode == 1  # committable
    assert json.loads((out / "_teachers" / "eval.json").read_text()) == {"knn": 1}
    # the code each experiment measured: its commit, whose parent is the commit it was run on
    head = _sh("git", "rev-parse", "HEAD", cwd=repo).strip()
    refs = ablations.experiment_refs()
    assert json.loads((out / "experiments.json").read_text()) == {
        n: {"commit": refs[n], "baseline": head} for n in ("e2", "e3", "e4")
    }
    assert _measured_on(out) == f", measured on commit {head[:7]}"  # what the report's first line says
    with pytest.raises(AmoeError, match="no finished experiment named e9: run `amoe ablate` first"):
        ablations.collect([e2, ablations.Experiment("e9", {}, None)], out)
    assert (out / "e2-balanced" / "eval.json").exists()  # a failed collect leaves the previous one intact


def test_queue_runs_experiments_once_and_refuses_uncommitted_params(repo: Path) -> None:
    (repo / "params.yaml").write_text("a: 5\n")
    with pytest.raises(AmoeError, match="params.yaml, dvc.yaml or dvc.lock has uncommitted changes: commit them"):
        ablations.queue(ablations.plan(1, ["ref"]))
    _sh("git", "checkout", "params.yaml", cwd=repo)
    exp = ablations.Experiment("q1", {"a": "4"}, None)
    assert ablations.queue([exp]) == [exp]
    assert ablations._queue_status() == [("q1", "Queued")]  # parsed from the real `dvc queue status`
    assert ablations.queue([exp]) == []  # already queued: not queued twice
    ablations.run_queue(jobs=1, poll_s=1)  # a real DVC queue worker runs it in a temporary workspace
    assert "q1" in ablations.experiment_refs() and ablations.queue([exp]) == []  # finished: skipped on a re-run
    (repo / "stage.py").write_text(STAGE + "# changed\n")
    _sh("git", "commit", "-qam", "new baseline", cwd=repo)
    assert ablations.queue([exp]) == [exp]  # a new commit is a new baseline: the experiment runs again
    _sh("dvc", "queue", "remove", "--all", cwd=repo)
    ablations.collect([exp], repo / "results")
    assert json.loads((repo / "results" / "q1-balanced" / "eval.json").read_text()) == {"knn": 0.4}


def test_queue_workers_share_the_cores_and_keep_a_users_thread_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two concurrent experiments on 4 cores get 2 OpenMP threads each (not 4 each, which would oversubscribe);
    a user's OMP_NUM_THREADS wins; stages import amoe_core from the experiment's workspace first."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    env = ablations.worker_env(2, {"PATH": "/bin", "PYTHONPATH": "/elsewhere"})
    assert env["OMP_NUM_THREADS"] == "2" and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(os.pathsep) == [".", "/elsewhere"]
    assert ablations.worker_env(8, {})["OMP_NUM_THREADS"] == "1"  # never below one thread
    assert ablations.worker_env(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
