"""dvc.lock is current on main: a fresh clone's `dvc status` finds no code or parameter dependency changed.

Otherwise `dvc repro` on a fresh clone reruns stages whose code did not change in substance, and `dvc exp show`
compares experiments against a baseline that no longer exists. Data deps and outputs (data/, runs/) are absent on a
fresh clone and are not this test's business: only deps that git versions (code, params.yaml) are checked, through
DVC's own status so the hash is DVC's (files and folders alike).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _import_graph import REPO

DVC = Path(sys.executable).with_name("dvc")


def _versioned(path: str) -> bool:
    """A dep that git versions: code and parameter files, not a stage output (data/, runs/)."""
    return not path.startswith(("data/", "runs/"))


def stale_deps(repo: Path) -> dict[str, list[str]]:
    """Stage -> its versioned deps (and params) whose recorded hash or value differs from the checkout."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(
        [str(DVC), "status", "--json"], cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    stale: dict[str, list[str]] = {}
    for stage, changes in json.loads(out or "{}").items():
        for change in changes:
            if not isinstance(change, dict):  # "always changed" and similar notes
                continue
            for path, what in change.get("changed deps", {}).items():
                if isinstance(what, dict):  # params: {key: "modified"/"new"/"deleted"}
                    stale.setdefault(stage, []).extend(f"{path}:{k} {v}" for k, v in what.items())
                elif _versioned(path):
                    stale.setdefault(stage, []).append(f"{path} {what}")
    return stale


def test_dvc_lock_records_the_checked_in_code_and_params() -> None:
    stale = stale_deps(REPO)
    short = {stage: deps[:4] + [f"... {len(deps) - 4} more"] * (len(deps) > 4) for stage, deps in stale.items()}
    assert not stale, (
        "dvc.lock is behind the checkout (a fresh clone's `dvc repro` would rerun these): "
        f"{short}. Run `dvc repro` (or `dvc commit STAGE` when the change cannot move a result) and commit dvc.lock."
    )


def test_a_code_edit_is_seen(tmp_path: Path) -> None:
    """The check can fail: in a copy of the repo, one byte more in a stage's code dep is reported for that stage."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(tmp_path / "r")], check=True)
    repo = tmp_path / "r"
    # The committed tree, with the working tree's dvc.yaml/dvc.lock, so the copy starts from the same lock.
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        (repo / name).write_text((REPO / name).read_text())
    before = stale_deps(repo)
    target = repo / "amoe_core" / "errors.py"
    target.write_text(target.read_text() + "\n# edited\n")
    after = stale_deps(repo)
    newly = {s: sorted(set(v) - set(before.get(s, []))) for s, v in after.items()}
    newly = {s: v for s, v in newly.items() if v}
    assert newly and all(any(d.startswith("amoe_core/errors.py") for d in v) for v in newly.values()), newly
