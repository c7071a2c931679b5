"""Teacher-feature cache (issue 31): distillation from `amoe teachers cache`'s outputs equals distillation with the
teachers online, step by step, within the cache dtype's rounding; a cache made for other teachers, grids or dtype is
refused with one line naming the part; the stage says the cache's size and refuses when the disk lacks room."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch
from _train_setup import make_shards, make_teachers, save_siglip2, tiny_params

from amoe_core.errors import AmoeError
from amoe_core.tracking.runs import RunDir
from amoe_core.train import teacher_cache
from amoe_core.train.distill import run

COMPARED = ("loss/total", "loss/dino/summary", "loss/dino/patch", "loss/dino/registers", "loss/siglip/summary",
            "loss/siglip/patch", "loss/relational", "loss/dino/relational", "loss/siglip/relational")  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    teachers = make_teachers(root / "teachers")
    shards = make_shards(root / "shards", n=30, per_shard=12)
    cache = root / "cache"
    # 5 steps of 2 accumulated batches of ~3 per epoch: the cache covers several epochs (other grids per epoch)
    info = teacher_cache.run(tiny_params(root, teachers, shards, steps=5, grad_accum=2, teacher_cache=str(cache)))
    return root, teachers, shards, cache, info


def test_distillation_from_the_cache_equals_online_teachers(setup, capsys) -> None:
    root, teachers, shards, cache, info = setup
    assert info["epochs"] >= 3 and info["pairs"] > 30  # images recur at other grids in later epochs
    online = tiny_params(root, teachers, shards, run="online", steps=5, grad_accum=2)
    cached = tiny_params(root, teachers, shards, run="cached", steps=5, grad_accum=2, teacher_cache=str(cache))
    run(online)
    run(cached)
    a, b = RunDir(root / "runs" / "online").metrics(), RunDir(root / "runs" / "cached").metrics()
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b, strict=True):
        for k in COMPARED:
            # bf16 keeps 8 significant bits: each target is rounded by <= 2^-9 relative (0.2%). The feature losses
            # (squared / cosine differences averaged over many targets, also through PHI-S fitted on the rounded
            # targets) move by about that relative to their size: 1% leaves room for the students drifting apart
            # over 5 steps (measured <= 0.12%). The relational terms are differences of pairwise similarities of
            # order 1 whose rounding errors do not average out, small losses (0.01-0.1): absolute 5e-3 (measured
            # <= 1.4e-3). Targets of a wrong image or grid move every term by 10-100%.
            if "relational" in k:
                assert rb[k] == pytest.approx(ra[k], abs=5e-3), (k, ra["step"])
            else:
                assert rb[k] == pytest.approx(ra[k], rel=1e-2), (k, ra["step"])


def test_a_cache_for_other_teachers_grids_or_dtype_is_refused(setup) -> None:
    root, teachers, shards, cache, _ = setup
    other = root / "other_teachers"
    shutil.copytree(root / "teachers", other)
    torch.manual_seed(123)
    save_siglip2(other / "siglip2")  # same architecture, other weights
    moved = [dict(t, path=t["path"].replace(str(root / "teachers"), str(other))) for t in teachers]
    cases = {
        "teacher 'siglip''s weights differ": tiny_params(root, moved, shards, run="x", teacher_cache=str(cache)),
        "the grid policy differs (max_tokens": tiny_params(root, teachers, shards, run="y", teacher_cache=str(cache)),
        "the dtype differs": tiny_params(
            root, teachers, shards, run="z", teacher_cache=str(cache), teacher_cache_dtype="float16"
        ),
    }
    cases["the grid policy differs (max_tokens"].packing.max_tokens = 12
    for why, params in cases.items():
        with pytest.raises(AmoeError) as e:
            run(params)
        msg = str(e.value)
        assert why in msg and "\n" not in msg and "amoe teachers cache" in msg, msg
        assert not RunDir(root / "runs" / params.distill.run).metrics()  # refused before any step


def test_the_stage_prints_the_size_and_refuses_a_full_disk(setup, monkeypatch, capsys) -> None:
    root, teachers, shards, _, info = setup
    out = root / "cache2"
    params = tiny_params(root, teachers, shards, steps=5, grad_accum=2, teacher_cache=str(out))
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(AmoeError, match="free space or point distill.teacher_cache"):
        teacher_cache.run(params)
    printed = capsys.readouterr().out
    assert f"{info['pairs']} (image, grid) pairs" in printed and "dino 32 ch" in printed and "siglip 64 ch" in printed
    assert not out.exists()  # nothing written
