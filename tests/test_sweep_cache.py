"""`amoe sweep` and the teacher cache (issue 31): a search over loss settings whose fixed params match a cache's
fingerprint reads it in every trial (the teachers never run); a search over packing, a cache of other inputs or one
too short for a trial runs the teachers online; one printed line says which and why."""

from __future__ import annotations

import pytest
from _train_setup import make_shards, make_teachers, tiny_params

from amoe_core.overrides import with_overrides
from amoe_core.sweep import cache_match, search
from amoe_core.tracking.runs import RunDir
from amoe_core.train import components, teacher_cache
from amoe_core.train.distill import run as distill


def distill_only(trial, params) -> float:
    """A trial objective without the evaluation: the real distillation, scored by its last total loss."""
    trial.set_user_attr("teacher_cache", str(params.distill.teacher_cache))
    distill(params)
    return -RunDir(params.distill.runs_dir / params.distill.run).metrics()[-1]["loss/total"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_cache")
    teachers = make_teachers(root / "teachers")
    shards = make_shards(root / "shards", n=30, per_shard=12)
    cache = root / "cache"
    teacher_cache.run(tiny_params(root, teachers, shards, steps=5, grad_accum=2, teacher_cache=str(cache)))
    return root, teachers, shards, cache


def sweep_params(setup, study: str, *extra: str):
    root, teachers, shards, cache = setup
    params = tiny_params(root, teachers, shards, steps=5, grad_accum=2, teacher_cache=str(cache))
    return with_overrides(
        params,
        [
            f"sweep.storage=sqlite:///{root / 'optuna.db'}",
            f"sweep.best_out={root / study}.yaml",
            f"sweep.study={study}",
            "sweep.n_trials=1",
            "sweep.steps=5",
            "sweep.objective=test_sweep_cache:distill_only",
            *extra,
        ],
    )


def counting_teachers(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = components.teacher_outputs

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(components, "teacher_outputs", counted)
    return calls


@pytest.mark.parametrize(
    ("search_over", "reads_cache"), [("loss.relational_weight", True), ("packing.min_tokens", False)]
)
def test_a_sweep_reads_a_matching_cache_unless_it_searches_what_the_cache_depends_on(
    setup, monkeypatch, capsys, search_over, reads_cache
) -> None:
    cache = setup[3]
    calls = counting_teachers(monkeypatch)
    summary = search.run(sweep_params(setup, f"s-{search_over}", f"sweep.search=[{search_over}]"))
    assert summary.get("COMPLETE") == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher cache")]
    assert len(lines) == 1, lines
    study = search.load_study(sweep_params(setup, f"s-{search_over}"))
    used = study.trials[0].user_attrs["teacher_cache"]
    if reads_cache:
        assert lines[0].startswith(f"teacher cache {cache}: trials read"), lines
        assert used == str(cache) and not calls  # targets and PHI-S fit from the cache: the teachers never ran
    else:
        assert f"not used: the search varies {search_over}" in lines[0] and "online" in lines[0], lines
        assert used == "None" and calls  # the teachers ran in the trial


def test_a_cache_of_other_inputs_or_too_few_epochs_is_not_used(setup) -> None:
    root, teachers, shards, cache = setup
    loss_only = "sweep.search=[loss.relational_weight]"
    cases = {
        "the grid policy differs (max_tokens": ["sweep.overrides=[packing.max_tokens=12]"],
        "the dtype differs": ["sweep.overrides=[distill.teacher_cache_dtype=float16]"],
        "it covers": ["sweep.steps=40"],  # 40 steps x 2 batches walk more epochs than the cache's 5 x 2
        "no complete cache there": [f"distill.teacher_cache={root / 'nowhere'}"],
        "none (distill.teacher_cache is unset)": ["distill.teacher_cache=null"],
    }
    for why, extra in cases.items():
        path, line = cache_match.trial_cache(sweep_params(setup, "x", loss_only, *extra))
        assert path is None and why in line and line.endswith("trials run the teachers online"), (why, line)
    path, line = cache_match.trial_cache(sweep_params(setup, "x", loss_only))
    assert path == cache, line
    # what the cache does not depend on: loss settings and the teachers' loss weights
    assert not teacher_cache.depends_on("loss.relational") and not teacher_cache.depends_on("teachers.1.patch_weight")
    assert teacher_cache.depends_on("packing.c_max") and teacher_cache.depends_on("teachers.0.path")
