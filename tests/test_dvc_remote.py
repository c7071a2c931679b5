"""`dvc push` / `dvc pull` with the project's default remote: a directory beside the checkout, shared by clones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_a_fresh_clone_pulls_what_the_checkout_pushed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    _run("git", "init", "-q", "-b", "main", cwd=repo)
    _run("git", "config", "user.email", "t@example.com", cwd=repo)
    _run("git", "config", "user.name", "t", cwd=repo)
    for name in ("config", ".gitignore"):
        shutil.copy(REPO / ".dvc" / name, repo / ".dvc" / name)
    (repo / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: python -c \"import pathlib; p = pathlib.Path('data/out'); p.mkdir(parents=True); "
        "(p / 'a.bin').write_bytes(bytes(range(256)) * 64)\"\n    outs: [data/out]\n"
    )
    _run("dvc", "repro", "-q", cwd=repo)
    _run("git", "add", "-A", cwd=repo)
    _run("git", "commit", "-qm", "pipeline", cwd=repo)
    _run("dvc", "push", "-q", cwd=repo)
    assert any((tmp_path / "amoe-dvc-storage").rglob("*")), "the default remote is ../amoe-dvc-storage"

    _run("git", "clone", "-q", str(repo), "clone", cwd=tmp_path)
    clone = tmp_path / "clone"
    assert not (clone / "data" / "out").exists()
    _run("dvc", "pull", "-q", cwd=clone)
    assert (clone / "data" / "out" / "a.bin").read_bytes() == bytes(range(256)) * 64
    assert "up to date" in _run("dvc", "status", cwd=clone).lower()  # nothing to re-run after a pull
