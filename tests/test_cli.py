"""The command line's own manners: a version, and a near miss named instead of a list of every choice."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from amoe_core.cli import main


def test_version_is_the_installed_package(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"amoe {version('amoe-core')}"


@pytest.mark.parametrize(
    "argv, near",
    [(["distil"], "distill"), (["curate", "embd"], "embed"), (["data", "ingset"], "ingest"), (["reprot"], "report")],
)
def test_a_typo_in_a_command_suggests_the_nearest(argv, near, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"did you mean {near!r}?" in capsys.readouterr().err


def test_no_suggestion_when_nothing_is_near(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["zzzzzz"])
    err = capsys.readouterr().err
    assert "invalid choice: 'zzzzzz'" in err and "did you mean" not in err
