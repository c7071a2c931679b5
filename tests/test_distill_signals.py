"""SIGTERM (preemption, `kill`) and SIGINT (Ctrl-C) during distill: the step in progress finishes, a checkpoint is
written, the process exits with the signal's code, and `--resume` continues exactly; a second signal ends it at once.
Real processes, real signals, sent at a random step."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _train_setup import make_shards, make_teachers, tiny_params

from amoe_core.checkpoints import latest_checkpoint, read_state
from amoe_core.config import dump_params
from amoe_core.tracking.runs import RunDir
from amoe_core.train.distill import run as distill

REPO = Path(__file__).resolve().parents[1]
STEPS = 5
COMPARED = ("lr", "grad_norm", "loss/total", "loss/relational")

# The process signals itself `times` times inside step `at` (0-based), as `kill PID` would from outside.
SIGNAL_IN_STEP = """
import os, sys
from amoe_core.cli import main
from amoe_core.train import distill
at, sig, times = int(os.environ["AT"]), int(os.environ["SIG"]), int(os.environ["TIMES"])
class Signalled(distill.DistillStep):
    def __call__(self, micro, step):
        if step == at:
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return super().__call__(micro, step)
distill.DistillStep = Signalled
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    teachers, shards = make_teachers(root / "teachers"), make_shards(root / "shards", n=30, per_shard=12)

    def params(run: str):
        return tiny_params(root, teachers, shards, run=run, steps=STEPS, checkpoint_every=100, log_every=1)

    distill(params("full"))
    return root, params, RunDir(root / "runs" / "full").metrics()


def _signalled(root: Path, params, run: str, sig: int, at: int, times: int) -> subprocess.CompletedProcess:
    path = root / f"{run}.yaml"
    path.write_text(dump_params(params(run)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "AT": str(at), "SIG": str(int(sig)), "TIMES": str(times)}
    cmd = [sys.executable, "-c", SIGNAL_IN_STEP, "distill", "--params", str(path), "-q"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_after_the_step_and_resume_continues_exactly(setup, sig) -> None:
    root, params, reference = setup
    at = random.randrange(STEPS - 1)  # any step but the last (after the last one the run is complete anyway)
    run = f"stopped_{sig.name}"
    res = _signalled(root, params, run, sig, at, times=1)
    assert res.returncode == 128 + sig, (at, res.returncode, res.stderr[-3000:])  # 143 / 130, as a shell shows
    assert f"stopped by {sig.name} after step {at + 1}" in res.stderr, res.stderr[-3000:]
    stopped = RunDir(root / "runs" / run)
    assert read_state(latest_checkpoint(stopped.checkpoints))["step"] == at + 1, at  # the step in progress finished
    distill(params(run), resume=True)
    resumed = stopped.metrics()
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1)), at
    for a, b in zip(reference, resumed):
        for key in COMPARED:
            # CPU, deterministic kernels, the same data order and RNG: equal up to float32 summation order (another
            # process may split reductions over threads differently), far below a step's change in loss (~1e-2)
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (at, a["step"], key)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_at_once(setup, sig) -> None:
    root, params, _ = setup
    at = random.randrange(1, STEPS - 1)
    run = f"twice_{sig.name}"
    res = _signalled(root, params, run, sig, at, times=2)
    assert res.returncode == -sig, (at, res.returncode, res.stderr[-3000:])  # ended by the signal itself
    assert latest_checkpoint(RunDir(root / "runs" / run).checkpoints) is None  # no step finished after it
