"""run_dvc: the real `dvc` of this environment, its output on success, one clear error naming the command on failure."""

from __future__ import annotations

import pytest

from amoe_core.dvc_cli import DvcError, run_dvc
from amoe_core.errors import AmoeError


def test_run_dvc_returns_stdout(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "DVC version" in run_dvc("version")


def test_run_dvc_failure_names_the_command_and_dvcs_reason(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no git, no .dvc: every repository command fails
    with pytest.raises(DvcError, match=r"^`dvc status --json` failed \(exit \d+\): .*not .*DVC repository") as e:
        run_dvc("status", "--json")
    assert isinstance(e.value, AmoeError)  # the CLI prints it as one line, exit code 2
