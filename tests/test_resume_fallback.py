"""`--resume` falls back past a damaged newest checkpoint (naming it and why), and params.yaml records the params of
the attempt that wrote the records, with every attempt kept in params_history.yaml."""

from __future__ import annotations

import json

import pytest
import yaml
from _train_setup import make_shards, make_teachers, tiny_params

from amoe_core.cli import main
from amoe_core.config import dump_params
from amoe_core.tracking.runs import RunDir
from amoe_core.train import distill


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback")
    return root, make_teachers(root / "teachers"), make_shards(root / "shards", n=24)


def _steps(run: RunDir) -> list[int]:
    return [r["step"] for r in run.metrics()]


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt"])
def test_resume_skips_a_truncated_newest_checkpoint(setup, tmp_path, damaged, capsys) -> None:
    root, teachers, shards = setup
    params = tiny_params(tmp_path, teachers, shards, steps=6, checkpoint_every=3)
    distill.run(params)
    run = RunDir(tmp_path / "runs" / "t")
    newest = run.checkpoints / "step_0000006" / damaged
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that filled up mid-copy
    (tmp_path / "params.yaml").write_text(dump_params(params))
    if damaged == "model.safetensors":  # export reads weights only: it takes the newest whose weights read back
        assert main(["export", "t", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "x")]) == 0
        assert json.loads((tmp_path / "x" / "config.json").read_text())["source"]["checkpoint"] == "step_0000003"
    assert main(["distill", "--resume", "--params", str(tmp_path / "params.yaml"), "-q"]) == 0
    events = run.events_file.read_text()
    assert "skipped unreadable checkpoint step_0000006 (" in events and "resume from step_0000003" in events
    assert _steps(run) == [1, 2, 3, 4, 5, 6]  # steps 4-6 trained again from step 3, logged once
    from amoe_core.checkpoints import resumable_checkpoint

    found, skipped = resumable_checkpoint(run.checkpoints)
    assert found is not None and found.path.name == "step_0000006" and skipped == []  # rewritten whole


class Crash(RuntimeError):
    pass


def test_params_yaml_follows_the_attempt_that_trained(setup, tmp_path, monkeypatch) -> None:
    root, teachers, shards = setup
    wrong = tiny_params(tmp_path, teachers, shards, steps=4, lr=1e-9)

    def crash(*args, **kwargs):  # a failure in the first step: no checkpoint written
        raise Crash("first attempt dies")

    with monkeypatch.context() as m:
        m.setattr(distill.DistillStep, "__call__", crash)
        with pytest.raises(Crash):
            distill.run(wrong)
    fixed = tiny_params(tmp_path, teachers, shards, steps=4, lr=3e-3)
    distill.run(fixed, resume=True)
    run = RunDir(tmp_path / "runs" / "t")
    assert run.params()["distill"]["lr"] == 3e-3
    history = list(yaml.safe_load_all(run.history_file.read_text()))
    assert [h["distill"]["lr"] for h in history] == [1e-9, 3e-3]
    assert "# attempt 2" in run.history_file.read_text() and _steps(run) == [1, 2, 3, 4]
    assert json.loads(run.train_file.read_text())["steps"] == 4
