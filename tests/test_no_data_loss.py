"""Nothing lost: a command never deletes or replaces what it did not write, outputs never overlap inputs, and a
second writer of the same output is refused at once (real files, real processes, real SIGSTOP/SIGKILL)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _train_setup import make_shards, make_teachers, tiny_params
from test_curation_cli import pipeline  # noqa: F401 - the embedded, clustered and sampled pool (a fixture)

from amoe_core.cli import main
from amoe_core.config import dump_params
from amoe_core.tracking.runs import RunDir
from amoe_core.train.distill import run as distill

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its content digest: what must survive untouched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _thesis(root: Path) -> Path:
    (root / "thesis").mkdir(parents=True)
    (root / "thesis" / "chapter1.tex").write_text("\\chapter{Years of work}\n")
    return root


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    params = tiny_params(root, make_teachers(root / "teachers"), make_shards(root / "shards", n=24), steps=2)
    distill(params)
    (root / "params.yaml").write_text(dump_params(params))
    return root


def test_export_never_replaces_a_folder_it_did_not_write(trained, tmp_path, capsys) -> None:
    params = str(trained / "params.yaml")
    user = _thesis(tmp_path / "home")
    before = _tree(user)
    assert main(["export", "t", "--params", params, "--out", str(user)]) == 2
    assert "holds files this stage did not write" in _one_line_error(capsys)
    assert _tree(user) == before
    # the run itself (and anything holding it) is an input of the export: refused before any write
    run_dir = trained / "runs" / "t"
    run_before = _tree(run_dir)
    for out in (run_dir, run_dir.parent, run_dir / "checkpoints"):
        assert main(["export", "t", "--params", params, "--out", str(out)]) == 2
        assert "overlaps the input" in _one_line_error(capsys)
    assert _tree(run_dir) == run_before
    # a model directory that merely looks like an export (a teacher's config.json + model.safetensors)
    teacher = trained / "teachers" / "dinov3"
    teacher_before = _tree(teacher)
    assert main(["export", "t", "--params", params, "--out", str(teacher)]) == 2
    assert "holds files this stage did not write" in _one_line_error(capsys)
    assert _tree(teacher) == teacher_before
    # an absent or empty folder is fine, and so is replacing an earlier export
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):
        assert main(["export", "t", "--params", params, "--out", str(out), "-q"]) == 0
        assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries or locks left


def test_distill_never_writes_into_a_folder_that_is_not_its_run(trained, tmp_path, capsys) -> None:
    """`--resume` on a folder that is no run used to train into it (params.yaml, checkpoints/, ... among its files)."""
    params = str(trained / "params.yaml")
    user = _thesis(tmp_path) / "thesis"
    before = _tree(user)
    argv = ["distill", "--resume", "--params", params, "-S", f"distill.runs_dir={tmp_path}", "-S", "distill.run=thesis"]
    assert main(argv) == 2
    assert "distill.run" in _one_line_error(capsys)
    assert _tree(user) == before


def test_a_run_from_before_markers_is_still_trained(trained, tmp_path) -> None:
    """A fresh clone's runs/balanced after `dvc repro` removed its outs: eval.json and resolution.csv, no marker."""
    old = tmp_path / "balanced"
    old.mkdir()
    (old / "eval.json").write_text("{}\n")
    (old / "resolution.csv").write_text("r\n")
    params = yaml.safe_load((trained / "params.yaml").read_text())
    params["distill"].update(runs_dir=str(tmp_path), run="balanced")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["distill", "--params", str(tmp_path / "params.yaml"), "-q"]) == 0
    assert (old / "train.json").exists() and (old / "eval.json").read_text() == "{}\n"


# ---------------------------------------------------------------------------------------------------------- curation
def test_curation_outputs_never_replace_inputs_or_foreign_folders(pipeline, tmp_path, capsys) -> None:  # noqa: F811
    tmp, params = pipeline
    inputs = {name: _tree(tmp / name) for name in ("emb", "clusters", "shards", "selection")}
    # sample.out set to the parent of its inputs used to swap it away, embeddings and clusters with it
    for override in (f"sample.out={tmp}", f"sample.plots={tmp}", f"cluster.out={tmp / 'emb'}"):
        assert main(["curate", override.split(".")[0], "--params", str(params), "-S", override, "-q"]) == 2
        assert "overlaps the input" in _one_line_error(capsys)
    # a folder holding someone's files (not an input) is not replaced either
    user = _thesis(tmp_path)
    before = _tree(user)
    for stage, override in (("sample", f"sample.plots={user}"), ("cluster", f"cluster.out={user}")):
        assert main(["curate", stage, "--params", str(params), "-S", override, "-q"]) == 2
        assert "holds files this stage did not write" in _one_line_error(capsys)
    # one stage's output is not another's: cluster.out pointed at the selection
    assert main(["curate", "cluster", "--params", str(params), "-S", f"cluster.out={tmp / 'selection'}", "-q"]) == 2
    assert "was written by `sample.out`" in _one_line_error(capsys)
    assert _tree(user) == before
    assert {name: _tree(tmp / name) for name in inputs} == inputs


# ---------------------------------------------------------------------------------------------------------- ingest
def test_ingest_out_equal_to_its_source_is_refused(shards_small, tmp_path, capsys) -> None:
    """It used to unlink the input shards before reading them: every image "corrupt", exit 0."""
    src = tmp_path / "shards"
    shutil.copytree(shards_small, src)
    before = _tree(src)
    assert main(["data", "ingest", "--source", f"shards:{src}", "--out", str(src), "-q"]) == 2
    assert "overlaps the input --source[0]" in _one_line_error(capsys)
    assert main(["data", "ingest", "--source", f"shards:{src}", "--out", str(src / "sub"), "-q"]) == 2
    capsys.readouterr()
    assert _tree(src) == before


STOP_AT_FIRST_CHUNK = """
import os, signal, sys
from amoe_core.cli import main
from amoe_core.data import staging
real = staging.stage_chunk
def stopped(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSTOP)  # the test inspects and kills us here, mid-ingest
    return real(*args, **kwargs)
staging.stage_chunk = stopped
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait_stopped(proc: subprocess.Popen) -> None:
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the first writer exited early (status {status})"


def test_second_ingest_into_one_out_is_refused_and_a_dead_writers_lock_taken_over(
    demo_pool_small, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["data", "ingest", "--source", f"folder:{demo_pool_small / 'pool'}", "--out", str(out), "-q"]
    first = subprocess.Popen([sys.executable, "-c", STOP_AT_FIRST_CHUNK, *argv, "-S", "ingest.workers=1"], env=_env())
    try:
        _wait_stopped(first)
        assert main(argv) == 2  # at once, naming who holds it
        assert f"is being written by PID {first.pid}" in _one_line_error(capsys)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the dead writer's lock (its file still names it) is taken over, and the output is complete and consistent
    assert main(argv) == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    in_shards = set()
    for shard in out.glob("shard-*.tar"):
        names = subprocess.run(["tar", "-tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
        in_shards |= {n.split(".")[0] for n in names}
    assert set(manifest["key"]) == in_shards and len(manifest) > 0


STOP_AT_FIRST_STEP = """
import os, signal, sys
from amoe_core.cli import main
from amoe_core.train import distill
class Stopped(distill.DistillStep):
    def __call__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSTOP)  # the test inspects and kills us here, mid-training
        return super().__call__(*args, **kwargs)
distill.DistillStep = Stopped
sys.exit(main(sys.argv[1:]))
"""


def test_distill_resume_while_the_run_trains_is_refused(trained, tmp_path, capsys) -> None:
    """Both used to train: records duplicated and interleaved, checkpoints written twice."""
    params = tmp_path / "params.yaml"
    tree = yaml.safe_load((trained / "params.yaml").read_text())
    tree["distill"].update(run="busy", steps=4)
    params.write_text(yaml.safe_dump(tree))
    argv = ["distill", "--params", str(params), "-q"]
    first = subprocess.Popen([sys.executable, "-c", STOP_AT_FIRST_STEP, *argv], env=_env())
    try:
        _wait_stopped(first)
        assert main([*argv, "--resume"]) == 2
        assert f"is being written by PID {first.pid}" in _one_line_error(capsys)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main([*argv, "--resume"]) == 0  # the killed run's lock is taken over
    assert [r["step"] for r in RunDir(trained / "runs" / "busy").metrics()] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------- modes
def test_atomic_outputs_follow_the_umask(tmp_path) -> None:
    """mkstemp/mkdtemp made every output 0600/0700: unreadable to a teammate or a dashboard running as another user."""
    code = (
        "import os, sys\n"
        "os.umask(0o022)\n"
        "from amoe_core.io import atomic_write_text, atomic_dir\n"
        "atomic_write_text(sys.argv[1] + '/params.yaml', 'seed: 0\\n')\n"
        "with atomic_dir(sys.argv[1] + '/selection', 'sample.out') as tmp:\n"
        "    (tmp / 'balanced.parquet').write_bytes(b'x')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=_env())
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert mode["params.yaml"] == 0o644 and mode["selection"] == 0o755, {k: oct(v) for k, v in mode.items()}


def test_outputs_written_before_markers_existed_are_still_replaced(tmp_path) -> None:
    """An older clone's cluster output (no marker yet) is recognised by its own files; a lookalike folder is not."""
    from amoe_core.errors import ConfigError
    from amoe_core.io import atomic_dir, written_by

    old = tmp_path / "clusters"
    (old / "level1").mkdir(parents=True)
    (old / "meta.json").write_text("{}")
    with atomic_dir(old, "cluster.out", legacy=("meta.json", "level1")) as tmp:
        (tmp / "meta.json").write_text('{"k": [2]}')
    assert written_by(old) == "cluster.out" and (old / "meta.json").read_text() == '{"k": [2]}'
    half = tmp_path / "half"  # only one of the two files: someone else's folder
    half.mkdir()
    (half / "meta.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds files this stage did not write"):
        with atomic_dir(half, "cluster.out", legacy=("meta.json", "level1")):
            pass
    assert (half / "meta.json").read_text() == "{}"
