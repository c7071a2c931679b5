"""Teacher-feature cache (issue 31): distillation from `amoe teachers cache`'s outputs equals distillation with the
teachers online, step by step, within the cache dtype's rounding; a cache made for other teachers, grids or dtype is
refused with one line naming the part; the stage says the cache's size and refuses when the disk lacks room; 2 ranks
(torchrun, gloo) write what 1 process writes; a killed run leaves no cache and its rerun continues."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from _train_setup import make_shards, make_teachers, save_siglip2, tiny_params
from safetensors.torch import load as load_safetensors

from amoe_core.config.section import dump_params
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


def read_cache(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every member of every shard: name -> its tensors."""
    out = {}
    for shard in sorted(path.glob("teachers-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                assert m.name not in out, m.name  # each (image, grid) once over all ranks' shards
                out[m.name] = load_safetensors(tar.extractfile(m).read())
    return out


def test_two_processes_write_the_one_process_cache(setup) -> None:
    """torchrun with 2 gloo ranks: each rank writes its own shards, rank 0 the fingerprint; image by image the cache
    equals the 1-process one (each pair computed in the same packed batch)."""
    root, teachers, shards, cache, info = setup
    two = root / "cache-two"
    params_file = root / "two.yaml"
    params_file.write_text(
        dump_params(tiny_params(root, teachers, shards, steps=5, grad_accum=2, teacher_cache=str(two)))
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "amoe_core.cli", "teachers", "cache", "--params", str(params_file), "-q"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name.split("-of-")[0] for p in two.glob("teachers-*.tar")} == {"teachers-00000", "teachers-00001"}
    one, other = read_cache(cache), read_cache(two)
    assert sorted(other) == sorted(one) and len(one) == info["pairs"]
    for name, tensors in one.items():
        assert sorted(other[name]) == sorted(tensors), name
        for k, t in tensors.items():
            # the same batch on both sides; torchrun's ranks run on 1 thread, this process on all cores: a matmul's
            # summation order may differ, which can flip a bf16 rounding by one unit in the last place (2^-7
            # relative); an image computed in another batch or at another grid differs by far more
            torch.testing.assert_close(other[name][k].float(), t.float(), rtol=2**-7, atol=1e-6, msg=(name, k))
    a, b = json.loads((cache / "fingerprint.json").read_text()), json.loads((two / "fingerprint.json").read_text())
    assert a == b


def test_a_killed_run_leaves_no_cache_and_the_rerun_continues(setup, monkeypatch) -> None:
    """Killed after some shards: no fingerprint (the reader refuses the folder), no temporaries; the rerun keeps
    the complete shards, computes only the rest, and the result equals the cache written in one go."""
    root, teachers, shards, cache, info = setup
    out = root / "cache-killed"
    params = tiny_params(root, teachers, shards, run="k", steps=5, grad_accum=2, teacher_cache=str(out))
    monkeypatch.setattr(teacher_cache, "PER_SHARD", 10)
    calls = []
    real = teacher_cache.components.teacher_outputs

    def dies_at_batch_8(*args, **kwargs):  # a kill cannot be produced in-process: the 8th batch raises instead
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_cache.components, "teacher_outputs", dies_at_batch_8)
    with pytest.raises(KeyboardInterrupt):
        teacher_cache.run(params)
    complete = sorted(p.name for p in out.glob("teachers-*.tar"))
    assert complete and not (out / "fingerprint.json").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    with pytest.raises(AmoeError, match="not a complete teacher cache"):
        run(tiny_params(root, teachers, shards, run="k2", teacher_cache=str(out)))
    kept = {name: (out / name).stat().st_mtime_ns for name in complete}
    calls.clear()
    jobs = len(teacher_cache.plan_jobs(teacher_cache.epoch_datasets(params)))
    teacher_cache.run(params)
    assert 0 < len(calls) < jobs  # only the batches of the pairs not yet in a complete shard
    assert {name: (out / name).stat().st_mtime_ns for name in complete} == kept  # not rewritten
    one, resumed = read_cache(cache), read_cache(out)
    assert sorted(resumed) == sorted(one)
    for name, tensors in one.items():
        for k, t in tensors.items():
            assert torch.equal(resumed[name][k], t), (name, k)  # same process, same batches: bit-identical


def test_moving_a_batch_leaves_the_teacher_view_on_the_host() -> None:
    """A step moves what the student and packed teachers read (patches, ids) to the device, not the per-image teacher
    view: only per-size teachers read it, and they move each image themselves (a GPU step copies its pixels once)."""
    from amoe_core.data.packed import PackedBatch

    batch = PackedBatch(
        patches=torch.rand(1, 4, 768),
        coords=torch.zeros(1, 4, 2, dtype=torch.long),
        image_id=torch.zeros(1, 4, dtype=torch.long),
        image_sizes=torch.tensor([[2, 2]]),
        images=[torch.rand(3, 32, 32)],
        keys=["a"],
    )
    moved = batch.to("meta")  # a device other than the host's, on any machine
    assert moved.patches.device.type == moved.image_id.device.type == "meta"
    assert moved.images[0].device.type == "cpu" and moved.images[0] is batch.images[0]
