"""A run's curves are dvclive's files, read through amoe_core/tracking/curves.py: each step once, the newest
attempt's values where a resumed run logged a step again, the expert load back as a list per layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amoe_core.errors import AmoeError
from amoe_core.tracking.curves import read_metric, read_steps, summary_file
from amoe_core.tracking.runs import RunDir
from amoe_core.train.live import LiveLog


def _log(run: Path, steps: range, offset: float, resume: bool) -> None:
    live = LiveLog(run / "dvclive", resume=resume)
    for s in steps:
        live.log({"step": s, "loss/total": offset + 1 / s, "lr": 0.1, "expert_load": [[0.25, 0.75], [s / 10, 0.5]]})
    live.close()


def test_a_resumed_attempt_replaces_the_steps_it_logs_again_and_drops_later_ones(tmp_path: Path) -> None:
    # attempt 1 logged steps 1-5 and died (checkpoint at 3); attempt 2 resumed from 3, logged 4 and died again;
    # attempt 3 resumed from 2 (step 3's checkpoint was damaged) and logged 3-6
    _log(tmp_path, range(1, 6), 0.0, resume=False)
    _log(tmp_path, range(4, 5), 10.0, resume=True)
    _log(tmp_path, range(3, 7), 20.0, resume=True)
    tsv = tmp_path / "dvclive" / "plots" / "metrics" / "loss" / "total.tsv"
    raw = [int(line.split("\t")[0]) for line in tsv.read_text().splitlines()[1:]]
    assert raw == [1, 2, 3, 4, 5, 4, 3, 4, 5, 6]  # dvclive only appends: nothing rewrote its file
    assert read_metric(tsv) == {1: 1.0, 2: 0.5, 3: 20 + 1 / 3, 4: 20.25, 5: 20.2, 6: 20 + 1 / 6}  # exact: floats
    records = RunDir(tmp_path).metrics()  # written with repr and read back, so == holds
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[3]["loss/total"] == 20.25 and records[0]["lr"] == 0.1
    assert records[5]["expert_load"] == [[0.25, 0.75], [0.6, 0.5]]
    assert json.loads(summary_file(tmp_path).read_text())["step"] == 6


def test_without_resume_dvclive_starts_the_curves_afresh(tmp_path: Path) -> None:
    _log(tmp_path, range(1, 6), 0.0, resume=False)
    _log(tmp_path, range(1, 3), 5.0, resume=False)
    assert [(r["step"], r["loss/total"]) for r in read_steps(tmp_path)] == [(1, 6.0), (2, 5.5)]


def test_summary_is_computed_from_the_curves(tmp_path: Path) -> None:
    live = LiveLog(tmp_path / "dvclive", resume=False)
    for s in range(1, 11):
        live.log({"step": s, "tokens_per_s": float(100 * s), "loss/total": 1 / s})
    live.close()
    run = RunDir(tmp_path)
    summary = run.write_train_summary()
    assert summary == json.loads(run.train_file.read_text())
    assert summary["steps"] == 10 and summary["loss"]["total"] == pytest.approx(0.1, abs=1e-12)
    assert summary["tokens_per_s"] == 650.0  # median of steps 3-10 (the first fifth is warm-up): (600 + 700) / 2


def test_a_run_without_curves_reads_as_none(tmp_path: Path) -> None:
    assert read_steps(tmp_path) == [] and RunDir(tmp_path).train_summary() == {}


def test_a_git_repository_without_commits_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dvclive reads the git revision of the repository around the run: in a fresh `git init` it raised scmrepo's
    "Empty git repo" from deep inside; the run now stops with what to do, and runs once a commit exists."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AmoeError, match=r"has no commit .*git commit --allow-empty -m init"):
        LiveLog(tmp_path / "dvclive", resume=False)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    live = LiveLog(tmp_path / "dvclive", resume=False)
    live.log({"step": 1, "loss/total": 0.5})
    live.close()
    assert read_metric(tmp_path / "dvclive" / "plots" / "metrics" / "loss" / "total.tsv") == {1: 0.5}
