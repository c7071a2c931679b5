"""Hostile-but-honest inputs cannot hang or exhaust ingest: only regular files are read, reads are bounded, folder
loops are walked once, every path left out is in the report with why, compressed shards are skipped, json metadata
is size-capped, and pool workers die with the ingest process (real files, FIFOs, devices, symlinks, SIGKILL)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, seed: int, side: int = 40) -> int:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    return path.stat().st_size


def _ingest(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`amoe data ingest` as a real process; the timeout only turns a hang (the old FIFO read) into a failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "amoe_core.cli", "data", "ingest", "-q", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_folder_source_reads_only_regular_files_once_and_reports_the_rest(tmp_path) -> None:
    pool = tmp_path / "pool" / "web"
    small = [_png(pool / f"img{i}.png", i) for i in range(3)]
    big = _png(pool / "big.png", 9, side=200)
    assert big > 2 * max(small)
    (pool / "zero.png").symlink_to("/dev/zero")  # read whole: never ends
    os.mkfifo(pool / "pipe.png")  # opened for reading: blocks forever
    (pool / "dangling.png").symlink_to(tmp_path / "gone.png")
    (pool / "loop").symlink_to(pool)  # a symlink loop: 40 levels deep before the kernel says ELOOP
    out = tmp_path / "out"
    res = _ingest(["--source", f"folder:{tmp_path / 'pool'}", "--out", str(out), "-S", f"ingest.max_bytes={big - 1}"])
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "ingest_report.json").read_text())
    unlisted = {r: sorted(Path(e["path"]).name for e in v) for r, v in report["unlisted"].items()}
    assert unlisted == {
        "not_a_regular_file": ["pipe.png", "zero.png"],
        "dangling_symlink": ["dangling.png"],
        "directory_already_visited": ["loop"],
    }, unlisted
    assert report["files"] == 4 and report["kept"] == 3  # each real file listed once, the loop not multiplying them
    assert [Path(e["path"]).name for e in report["skipped_files"]["too_large"]] == ["big.png"]


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_shards_compressed_refused_and_json_capped(tmp_path) -> None:
    img = tmp_path / "a.png"
    _png(img, 0)
    gz = tmp_path / "gz"
    gz.mkdir()
    _tar(gz / "shard-000000.tar", {"a.png": img.read_bytes()}, mode="w:gz")  # a gzip stream named .tar
    res = _ingest(["--source", f"shards:{gz}", "--out", str(tmp_path / "o1")])
    assert res.returncode == 2 and "gzip-compressed; shards are read as plain tars" in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    huge_meta = json.dumps({"source": "x", "pad": "y" * 1_000_000}).encode()  # a 1 MB json member
    _tar(plain / "shard-000000.tar", {"a.png": img.read_bytes(), "a.json": huge_meta, "b.png": img.read_bytes()})
    res = _ingest(["--source", f"shards:{plain}", "--out", str(tmp_path / "o2")])
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "o2" / "ingest_report.json").read_text())
    assert [e["path"].rsplit(":", 1)[1] for e in report["unlisted"]["metadata_too_large"]] == ["a.json"]
    assert report["decoded"] == 2


SLOW_WORKERS = """
import sys, time
from amoe_core.cli import main
from amoe_core.data import staging
def slow(*args, **kwargs):  # a worker busy on a huge chunk
    time.sleep(600)
staging.stage_chunk = slow
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pool_workers_die_with_a_killed_ingest(tmp_path) -> None:
    pool = tmp_path / "pool"
    for i in range(4):
        _png(pool / f"img{i}.png", i)
    argv = ["data", "ingest", "--source", f"folder:{pool}", "--out", str(tmp_path / "out"), "-q"]
    argv += ["-S", "ingest.workers=2", "-S", "ingest.chunk_size=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    main = subprocess.Popen([sys.executable, "-c", SLOW_WORKERS, *argv], env=env)
    workers: list[int] = []
    try:
        for _ in range(600):  # until both workers are up (polling, not timing: the bound only stops a broken run)
            workers = _children(main.pid)
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, "the pool never started"
        main.send_signal(signal.SIGKILL)
        main.wait()
        for _ in range(300):
            if not any(_alive(w) for w in workers):
                break
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "pool workers outlived the killed ingest"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_unreadable_directory_is_reported_when_not_root(tmp_path) -> None:
    """Run as `nobody` (root reads every folder): a folder it may not list is in the report, not silently dropped."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the ingest as another user")
    base = Path(tempfile.mkdtemp(prefix="amoe-nobody-"))  # pytest's tmp_path is 0700: nobody could not enter it
    try:
        base.chmod(0o777)
        pool = base / "pool"
        _png(pool / "open" / "a.png", 0)
        _png(pool / "closed" / "b.png", 1)
        for d in (pool, pool / "open"):
            d.chmod(0o755)
        (pool / "open" / "a.png").chmod(0o644)
        (pool / "closed").chmod(0o700)  # root's: nobody cannot list it
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)}
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "amoe_core.cli",
               "data", "ingest", "-q", "--source", f"folder:{pool}", "--out", str(base / "out")]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=base, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        report = json.loads((base / "out" / "ingest_report.json").read_text())
        assert [Path(e["path"]).name for e in report["unlisted"]["unreadable_directory"]] == ["closed"]
        assert report["kept"] == 1
    finally:
        shutil.rmtree(base)
