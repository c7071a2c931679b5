"""Every benchmark runs to its last line in `--smoke` mode (tiny sizes), so a benchmark the README cites cannot rot
unnoticed between the hand runs that measure it. The numbers of a smoke run mean nothing; only their form is checked:
the last line is the same-run ratio, finite and positive."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_there_are_benchmarks() -> None:
    expected = {"hkmeans.py", "ingest.py", "knn.py", "moe.py", "packing.py", "teachers.py", "train.py"}
    assert expected <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_smoke_runs_to_its_ratio(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, str(script), "--smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"{script.name} --smoke failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    last = r.stdout.strip().splitlines()[-1]
    assert "ratio" in last or re.search(r"\d\.\d+x", last), f"{script.name}: last line is not a ratio: {last!r}"
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+|-?inf|nan", last)]
    assert numbers and all(math.isfinite(x) and x > 0 for x in numbers), f"{script.name}: {last!r}"
