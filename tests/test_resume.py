"""Exact resume: a run stopped by a crash and resumed with --resume logs the same records as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from _train_setup import make_shards, make_teachers, tiny_params

from amoe_core.checkpoints import latest_checkpoint, load_model_tensors, read_state
from amoe_core.errors import AmoeError
from amoe_core.tracking.runs import RunDir
from amoe_core.train import loop
from amoe_core.train.distill import run

COMPARED = (
    "lr",
    "grad_norm",
    "loss/total",
    "loss/dino/summary",
    "loss/dino/patch",
    "loss/dino/registers",
    "loss/siglip/summary",
    "loss/siglip/patch",
    "loss/relational",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    # 30 images: about 3 batches per epoch; 4 steps of 2 accumulated batches cross epoch boundaries
    return root, make_teachers(root / "teachers"), make_shards(root / "shards", n=30, per_shard=12)


class Crash(RuntimeError):
    pass


def test_resume_equals_uninterrupted_run(setup, monkeypatch) -> None:
    root, teachers, shards = setup
    full = tiny_params(root, teachers, shards, run="full", steps=4, checkpoint_every=2, grad_accum=2)
    run(full)
    reference = RunDir(root / "runs" / "full").metrics()
    assert [r["step"] for r in reference] == [1, 2, 3, 4]

    # the same run dies inside step 4: step 3 is logged but not checkpointed (the last checkpoint is step 2)
    params = tiny_params(root, teachers, shards, run="crashed", steps=4, checkpoint_every=2, grad_accum=2)
    real_call = loop.DistillStep.__call__

    def dying(self, micro, step):  # noqa: ANN001, ANN202
        if step == 3:  # 0-based: the 4th optimizer step
            raise Crash("simulated node failure")
        return real_call(self, micro, step)

    monkeypatch.setattr(loop.DistillStep, "__call__", dying)
    with pytest.raises(Crash):
        run(params)
    crashed = RunDir(root / "runs" / "crashed")
    assert [r["step"] for r in crashed.metrics()] == [1, 2, 3]
    assert read_state(latest_checkpoint(crashed.checkpoints))["step"] == 2
    monkeypatch.setattr(loop.DistillStep, "__call__", real_call)

    with pytest.raises(AmoeError, match="already exists"):
        run(params)  # without --resume nothing is overwritten
    run(params, resume=True)
    resumed = crashed.metrics()
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # step 3 re-done once, not duplicated
    for a, b in zip(reference, resumed):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
        assert torch.allclose(torch.tensor(a["expert_load"]), torch.tensor(b["expert_load"]), atol=1e-6)

    final_a = load_model_tensors(latest_checkpoint(root / "runs" / "full" / "checkpoints"))
    final_b = load_model_tensors(latest_checkpoint(crashed.checkpoints))
    for k in final_a:
        torch.testing.assert_close(final_a[k], final_b[k], rtol=0, atol=1e-6)
    state = read_state(latest_checkpoint(crashed.checkpoints))
    assert state["step"] == 4 and state["data"]["epoch"] >= 1  # crossed an epoch boundary
    assert "resume from step_0000002" in (crashed.path / "events.log").read_text()
    # the records above are dvclive's files read back (tracking/curves.py); dvclive only appended to them: the
    # killed attempt's step 3 is still in the file, before the resumed attempt's 3 and 4, and the reader took those
    tsv = (crashed.path / "dvclive" / "plots" / "metrics" / "loss" / "total.tsv").read_text().split()
    assert tsv[:2] == ["step", "total"] and [int(x) for x in tsv[2::2]] == [1, 2, 3, 3, 4]
    assert float(tsv[9]) == resumed[2]["loss/total"] and float(tsv[11]) == resumed[3]["loss/total"]
    assert json.loads(crashed.train_file.read_text())["steps"] == 4  # the summary of the curves as read


def test_rerun_after_dvc_removed_the_outs_starts_clean(setup) -> None:
    """`dvc repro` deletes a changed stage's outs (params.yaml, checkpoints) but not the other records in the run
    directory; the new run must not append to the old run's curves."""
    import shutil

    root, teachers, shards = setup
    run(tiny_params(root, teachers, shards, run="again", steps=2))
    again = RunDir(root / "runs" / "again")
    first = again.metrics()
    again.params_file.unlink()
    shutil.rmtree(again.checkpoints)
    run(tiny_params(root, teachers, shards, run="again", steps=3, seed=1))
    records = again.metrics()
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss/total"] != pytest.approx(first[0]["loss/total"], abs=1e-9)  # distill.seed=1 took effect
    tsv = (again.path / "dvclive" / "plots" / "metrics" / "loss" / "total.tsv").read_text().split()
    assert [int(x) for x in tsv[2::2]] == [1, 2, 3]  # the old run's rows are gone (dvclive started afresh)
    summary = again.train_summary()
    assert summary["steps"] == 3 and summary["loss"]["total"] == records[-1]["loss/total"]
    assert summary["tokens_per_s"] == pytest.approx(sorted(r["tokens_per_s"] for r in records)[1])  # median
