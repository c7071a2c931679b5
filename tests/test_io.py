"""Atomic writes keep the old file on failure and never leave temporaries; jsonl survives a truncated tail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from amoe_core.io import atomic_path, atomic_write_json, atomic_write_text
from amoe_core.tracking.runs import RunDir, list_runs
from amoe_core.train.live import LiveLog


def test_failed_write_keeps_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_killed_writer_never_exposes_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "big.json"
    atomic_write_json(target, {"complete": True})
    code = (
        "import os, sys\n"
        "from amoe_core.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as t:\n"
        "    t.write_text('{\"complete\": fal')\n"
        "    os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert target.read_text().strip().endswith("}")
    assert '"complete": true' in target.read_text()


def test_run_dir_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r1")
    run.write_params("seed: 3\n")
    live = LiveLog(run.live_dir, resume=False)
    live.log({"step": 0, "loss/total": 1.5})
    live.close()
    run.write_eval({"knn": {"fmnist": {"teacher:dino": {"64px": {"k20": 0.8}}}}})
    run.event("start")
    assert run.params() == {"seed": 3}
    assert run.metrics() == [{"step": 0, "loss/total": 1.5}]
    assert run.eval()["knn"]["fmnist"]["teacher:dino"]["64px"]["k20"] == 0.8
    assert [r.id for r in list_runs(tmp_path)] == ["r1"]
    assert os.path.exists(run.events_file)
