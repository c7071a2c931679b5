"""Every invalid value exits 2 with one line naming the field (before any work); a full disk and a read-only output
give one line saying where, and leave nothing half-written that looks complete (real tmpfs mounts when allowed)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amoe_core.cli import main

REPO = Path(__file__).resolve().parents[1]


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("student.overrides.patch_size=8", "student.overrides.patch_size"),
        ("distill.lr=1e300", "distill.lr"),
        ("distill.lr=.inf", "distill.lr"),
        ("distill.selection=params.yaml", "distill.selection"),
        ("evaluate.resolutions=[0]", "evaluate.resolutions"),
        ("ingest.background=[1,2,999]", "ingest.background"),
        ("distill.run=..", "distill.run"),
        ("distill.run=.", "distill.run"),
    ],
)
def test_invalid_override_exits_2_naming_the_field(override, names, capsys) -> None:
    assert main(["model", "info", "tiny", "--params", str(REPO / "params.yaml"), "-S", override]) == 2
    assert names in _error(capsys)


def test_invalid_params_files_exit_2(tmp_path, capsys) -> None:
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    dup = tmp_path / "dup.yaml"
    dup.write_text("distill:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n")
    for path, says in ((tmp_path, "is a directory"), (binary, "not a text YAML file"), (empty, "is empty"),
                       (dup, "duplicate key 'lr' (line 4)")):  # fmt: skip
        assert main(["model", "info", "tiny", "--params", str(path)]) == 2
        assert says in _error(capsys)


def _pool(root: Path, n: int, side: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / "web").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / "web" / f"{i}.png")
    return root


def test_output_under_a_file_exits_2(tmp_path, capsys) -> None:
    pool = _pool(tmp_path / "pool", 2)
    assert main(["data", "ingest", "--source", f"folder:{pool}", "--out", str(REPO / "params.yaml" / "x")]) == 2
    assert "params.yaml is a file, not a folder" in _error(capsys)


def test_two_roots_with_the_same_layout_are_two_sources(tmp_path) -> None:
    """/a/pool and /b/pool hold different files at the same relative paths: distinct images, not an overlap."""
    a, b = _pool(tmp_path / "a" / "pool", 3), tmp_path / "b" / "pool"
    rng = np.random.default_rng(1)
    for i in range(3):
        (b / "web").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(b / "web" / f"{i}.png")
    out = tmp_path / "out"
    argv = ["data", "ingest", "--source", f"folder:{a}", "--source", f"folder:{b}", "--out", str(out), "-q"]
    assert main(argv) == 0
    assert json.loads((out / "ingest_report.json").read_text())["kept"] == 6
    # the same folder twice, or one inside the other, is an overlap
    assert main(["data", "ingest", "--source", f"folder:{a}", "--source", f"folder:{a / 'web'}", "--out",
                 str(tmp_path / "o2")]) == 2  # fmt: skip


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}): a full disk needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_full_disk_exits_2_and_nothing_looks_complete(tmp_path, capsys) -> None:
    pool = _pool(tmp_path / "pool", 40, side=128)  # ~50 kB each: 2 MB in all, four times the disk
    with _tmpfs(tmp_path / "disk", "size=512k") as disk:
        out = disk / "shards"
        argv = ["data", "ingest", "--source", f"folder:{pool}", "--out", str(out), "-S", "ingest.workers=1"]
        assert main(argv) == 2
        err = _error(capsys)
        assert "No space left on device" in err and str(out) in err and "bytes free there" in err
        assert not (out / "manifest.parquet").exists()
        state = json.loads((out / ".ingest_state.json").read_text())
        assert state["complete"] is False
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert main([*argv, "-q"]) == 0  # with space, the same command resumes and completes
        assert json.loads((out / "ingest_report.json").read_text())["kept"] == 40


def test_read_only_output_exits_2(tmp_path, capsys) -> None:
    pool = _pool(tmp_path / "pool", 2)
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        assert main(["data", "ingest", "--source", f"folder:{pool}", "--out", str(ro / "shards")]) == 2
        assert "read-only file system" in _error(capsys).lower()  # strerror says "Read-only"
