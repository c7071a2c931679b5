"""Against a real single-node SLURM cluster (scripts/slurm-dev-cluster), started once per session in a tmp dir.

Skipped only when the slurm/munge binaries are absent (CI installs them: .ci/run).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from amoe_core.config import LaunchConfig
from amoe_core.launch.cluster import DevCluster, free_port_pair, slurm_available, slurm_binaries_present
from amoe_core.launch.executors import make_executor, resolve_kind

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not slurm_binaries_present(),
        reason="slurm binaries absent: apt-get install slurmctld slurmd slurm-client munge (CI installs them)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="the dev cluster runs slurmd as root"),
]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path_factory.mktemp("slurm"), port=free_port_pair())
    cluster.start()
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    os.environ.update(cluster.env())
    try:
        yield cluster
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cluster.stop()


def test_dev_cluster_is_up_on_loopback_only(slurm_cluster: DevCluster) -> None:
    assert slurm_cluster.is_up() and slurm_available()
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    ours = [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{slurm_cluster.port}")]
    assert ours == [f"127.0.0.1:{slurm_cluster.port}"], ours


def test_auto_executor_follows_sinfo(slurm_cluster: DevCluster, tmp_path: Path, monkeypatch) -> None:
    assert resolve_kind(LaunchConfig(executor="auto")) == "slurm"
    # a controller that does not answer: same binaries on PATH, nothing listening -> local
    dead = tmp_path / "dead.conf"
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    dead.write_text(conf.replace(f"SlurmctldPort={slurm_cluster.port}", f"SlurmctldPort={free_port_pair()}"))
    monkeypatch.setenv("SLURM_CONF", str(dead))
    assert resolve_kind(LaunchConfig(executor="auto")) == "local"


def test_two_task_job_initialises_torch_distributed(slurm_cluster: DevCluster, tmp_path: Path) -> None:
    from amoe_core.launch.distributed import world_check

    launch = LaunchConfig(executor="slurm", folder=tmp_path / "sub", tasks_per_node=2, mem_gb=1, timeout_min=5)
    job = make_executor(launch, "world-check").submit(world_check)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [(r["rank"], r["world_size"], r["backend"]) for r in results] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert all(r["sum"] == 3.0 for r in results)  # 1 + 2: the all-reduce really crossed processes
    assert job.state != "UNKNOWN"  # the sacct stand-in answers (no accounting on the dev cluster)


# ---------------------------------------------------------------------------------------------------------- distill
@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory):
    from _train_setup import make_shards, make_teachers

    root = tmp_path_factory.mktemp("slurm_train")
    return root, make_teachers(root / "teachers"), make_shards(root / "shards", n=40)


def _params_file(root: Path, params) -> Path:
    from amoe_core.config import dump_params

    path = root / f"params-{params.distill.run}.yaml"
    path.write_text(dump_params(params))
    return path


def test_amoe_submit_distill_runs_two_ranks(slurm_cluster: DevCluster, train_inputs, capsys) -> None:
    from _train_setup import tiny_params

    from amoe_core.checkpoints import latest_checkpoint, read_state
    from amoe_core.cli import main
    from amoe_core.data.loader import build_loader
    from amoe_core.tracking.runs import RunDir

    root, teachers, shards = train_inputs
    params = tiny_params(root, teachers, shards, run="ddp", steps=3, checkpoint_every=3)
    params.launch.executor, params.launch.tasks_per_node = "auto", 2
    assert main(["submit", "distill", "--params", str(_params_file(root, params))]) == 0
    assert "(slurm)" in capsys.readouterr().out

    run = RunDir(root / "runs" / "ddp")
    records = run.metrics()
    assert [r["step"] for r in records] == [1, 2, 3]
    # each step's global batch = rank 0's batch + rank 1's batch of the 2-rank plan
    per_rank = [
        [b for e in (0, 1) for b in build_loader(params.packing, shards, None, 0, r, 2, epoch=e)] for r in (0, 1)
    ]
    for i, rec in enumerate(records):
        assert rec["images_per_s"] > 0
        images = per_rank[0][i].n_images + per_rank[1][i].n_images
        tokens = per_rank[0][i].n_tokens + per_rank[1][i].n_tokens
        assert round(rec["tokens_per_s"] / rec["images_per_s"] * images) == tokens
    events = (run.path / "events.log").read_text()
    assert "rank 0/2 done at step 3" in events and "rank 1/2 done at step 3" in events
    state = read_state(latest_checkpoint(run.checkpoints))
    assert state["world_size"] == 2 and sorted(state["rng"]) == ["0", "1"]


def test_amoe_submit_teachers_cache_on_two_tasks_equals_local(slurm_cluster: DevCluster, train_inputs) -> None:
    """`amoe submit teachers-cache` as a 2-task job: each task writes its own shards, rank 0 the fingerprint; the
    cache holds the (image, grid) pairs the local 1-process cache holds (their values: tests/test_teacher_cache.py)."""
    import json
    import tarfile

    from _train_setup import tiny_params

    from amoe_core.cli import main
    from amoe_core.train import teacher_cache

    root, teachers, shards = train_inputs
    teacher_cache.run(tiny_params(root, teachers, shards, steps=4, teacher_cache=str(root / "tc-local")))
    params = tiny_params(root, teachers, shards, run="tc", steps=4, teacher_cache=str(root / "tc-slurm"))
    params.launch.executor, params.launch.tasks_per_node = "auto", 2
    assert main(["submit", "teachers-cache", "--params", str(_params_file(root, params)), "-q"]) == 0
    local, slurm = root / "tc-local", root / "tc-slurm"
    assert {p.name.split("-of-")[0] for p in slurm.glob("teachers-*.tar")} == {"teachers-00000", "teachers-00001"}

    def members(cache: Path) -> list[str]:
        return sorted(m.name for shard in cache.glob("teachers-*.tar") for m in tarfile.open(shard))

    assert members(slurm) == members(local)
    assert json.loads((slurm / "fingerprint.json").read_text()) == json.loads((local / "fingerprint.json").read_text())


def test_preempted_job_requeues_and_resumes_from_checkpoint(slurm_cluster: DevCluster, train_inputs) -> None:
    import time

    from _train_setup import tiny_params

    from amoe_core.checkpoints import latest_checkpoint, read_state
    from amoe_core.launch.submit import submit_stage
    from amoe_core.tracking.runs import RunDir

    root, teachers, shards = train_inputs
    # enough steps that the signal lands mid-run even when tiny steps take a few milliseconds
    params = tiny_params(root, teachers, shards, run="preempt", steps=200, checkpoint_every=4)
    params.launch.executor = "slurm"
    (job,) = submit_stage(params, "distill", wait=False)
    run = RunDir(root / "runs" / "preempt")
    deadline = time.time() + 240
    while latest_checkpoint(run.checkpoints) is None:
        assert time.time() < deadline, "no checkpoint before the deadline"
        assert job.state not in ("FAILED", "CANCELLED"), job.stderr()
        time.sleep(0.1)
    first = read_state(latest_checkpoint(run.checkpoints))["step"]
    assert first < params.distill.steps
    # what SLURM sends before preempting or at the time limit (--signal=USR2@delay): submitit checkpoints + requeues
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
    # SLURM holds a requeued job for 2 minutes (Reason=BeginTime); an operator's `starttime=now` releases it
    while True:
        assert time.time() < deadline, "the job was not requeued"
        out = subprocess.run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T|%r"], capture_output=True, text=True)
        if out.stdout.strip() == "PENDING|BeginTime":
            subprocess.run(["scontrol", "update", f"jobid={job.job_id}", "starttime=now"], check=True)
            break
        time.sleep(0.5)
    result = job.results()[0]
    assert result["steps"] == params.distill.steps
    records = run.metrics()
    assert [r["step"] for r in records] == list(range(1, params.distill.steps + 1))
    events = (run.path / "events.log").read_text()
    assert "preempted" in events and "resume from step_" in events, events
    assert read_state(latest_checkpoint(run.checkpoints))["step"] == params.distill.steps


# ---------------------------------------------------------------------------------------------------------- curation
def test_amoe_submit_embed_and_cluster_on_two_tasks_equal_local(slurm_cluster: DevCluster, tmp_path: Path) -> None:
    import json

    import numpy as np
    import yaml
    from test_curation_distributed import pair_agreement
    from test_embed import build_shards, save_tiny_encoder

    from amoe_core.cli import main

    encoder = save_tiny_encoder(tmp_path / "enc")
    build_shards(tmp_path / "shards", {"grey": 40, "colour": 30}, shard_size=16)

    def params_file(tag: str, **launch) -> Path:
        tree = {
            "embed": {"shards": str(tmp_path / "shards"), "encoder": f"hf:{encoder}", "image_size": 32,
                      "batch_size": 16, "out": str(tmp_path / f"emb-{tag}")},
            "cluster": {"embeddings": str(tmp_path / f"emb-{tag}"), "k": [10, 3], "iters": 10,
                        "resampling_steps": [3, 2], "sample_size": [3, 2], "out": str(tmp_path / f"clusters-{tag}")},
            "launch": {"folder": str(tmp_path / "submitit"), **launch},
        }  # fmt: skip
        path = tmp_path / f"params-{tag}.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path

    local = params_file("local")
    slurm = params_file("slurm", executor="slurm", tasks_per_node=2, mem_gb=1, timeout_min=10)
    for stage in ("embed", "cluster"):
        assert main(["curate", stage, "--params", str(local), "-q"]) == 0
        assert main(["submit", stage, "--params", str(slurm), "-q"]) == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "emb-local" / "embeddings.npy"), np.load(tmp_path / "emb-slurm" / "embeddings.npy")
    )  # same images in the same batches: bit-identical
    assert json.loads((tmp_path / "emb-slurm" / "meta.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "clusters-slurm" / "meta.json").read_text())["world_size"] == 2
    for level in (1, 2):
        a = np.load(tmp_path / "clusters-local" / f"level{level}" / "assignment.npy")
        b = np.load(tmp_path / "clusters-slurm" / f"level{level}" / "assignment.npy")
        rand, together = pair_agreement(a, b)
        assert rand >= 0.99 and together >= 0.99, (level, rand, together)  # see test_curation_distributed
