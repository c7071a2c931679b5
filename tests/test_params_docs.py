"""Parameters are documented once, in the config models: `amoe params` prints every key's type, default and meaning
from `Field(description=...)`, and a mistyped section or key names the nearest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from amoe_core.cli import main
from amoe_core.config import DistillConfig, Params, load_params
from amoe_core.config.describe import describe, rows
from amoe_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """`model` and every model its fields hold, directly or as list / optional items."""
    seen.add(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                if ann not in seen:
                    _models(ann, seen)
            else:
                stack.extend(getattr(ann, "__args__", ()))
    return seen


def test_every_field_of_every_section_has_a_description() -> None:
    models = _models(Params, set())
    assert {"DistillConfig", "TeacherSpec", "DemoTeacherConfig", "EvalDataset"} <= {m.__name__ for m in models}
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items() if not f.description]
    assert not missing, f"add Field(description=...) to {missing}"


def test_params_distill_lists_every_key_with_type_default_and_description(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no description wraps: each key's line ends with its whole description
    assert main(["params", "distill"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  distill.")}
    assert sorted(lines) == sorted(f"distill.{name}" for name in DistillConfig.model_fields)
    defaults = DistillConfig().model_dump(mode="json")
    for name, field in DistillConfig.model_fields.items():
        line = lines[f"distill.{name}"]
        assert field.description and line.endswith(field.description), line
        assert json.dumps(defaults[name])[:30] in line, line  # defaults wider than the column wrap after 30 characters
    assert "int (>=1)" in lines["distill.steps"] and "float (>0, <=10)" in lines["distill.lr"]


def test_params_lists_every_section_and_list_items_in_the_override_spelling(capsys) -> None:
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    headings = [line.split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert headings == [name for name, f in Params.model_fields.items() if name != "seed"]
    assert "  teachers.<i>.register_weight " in out and "  demo_teachers.siglip2.epochs " in out
    # every key shown is one that -S accepts (a list item as index 0): setting each to its value validates; keys under
    # an optional section left out (None) have no value to set
    keys = [key.replace("<i>", "0") for key, *_ in rows(Params, "", Params().model_dump(mode="json"))]
    values = {key: _value_at(key) for key in keys}
    overrides = [f"{key}={json.dumps(v)}" for key, v in values.items() if v is not _ABSENT]
    assert len(overrides) > 150  # the walk reached every section
    assert load_params(REPO / "params.yaml", overrides) == Params()


_ABSENT = object()


def _value_at(key: str) -> object:
    """The default value at a dotted key, or _ABSENT where a parent is None."""
    node: object = Params().model_dump(mode="json")
    for part in key.split("."):
        if node is None:
            return _ABSENT
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    return node


def test_params_ignores_a_broken_params_yaml(tmp_path, monkeypatch, capsys) -> None:
    """It documents params.yaml, so it must work while that file is wrong."""
    (tmp_path / "params.yaml").write_text("distill: {stesp: 3}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["params", "loss"]) == 0
    assert "loss.relational_weight" in capsys.readouterr().out


def test_unknown_section_exits_2_naming_the_nearest(capsys) -> None:
    assert main(["params", "distil"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown params section 'distil'; did you mean 'distill'?" in err


def test_unknown_override_key_suggests_the_nearest(capsys) -> None:
    assert main(["distill", "--params", str(REPO / "params.yaml"), "-S", "distill.stesp=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amoe: error: unknown key distill.stesp; did you mean distill.steps? allowed keys here:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("distill: {stesp: 3}\n", "unknown key distill.stesp; did you mean distill.steps?"),
        (
            "teachers: [{name: a, knid: dinov3, path: p}]\n",
            "unknown key teachers.0.knid; did you mean teachers.0.kind?",
        ),
        (
            "student: {overrides: {detph: 2}}\n",
            "unknown key student.overrides.detph; did you mean student.overrides.depth?",
        ),
        ("distill: {zzzzzz: 3}\n", "unknown key distill.zzzzzz; allowed keys here:"),  # nothing near: no guess
    ],
)
def test_unknown_key_in_params_yaml_suggests_the_nearest(tmp_path, text, expected) -> None:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert str(e.value).startswith(expected)


def test_prefect_run_form_points_at_amoe_params() -> None:
    """The run form's `overrides` field says where the keys are documented (Prefect reads the docstring's Args)."""
    from prefect.utilities.callables import parameter_schema  # prefect is slow to import: only this test needs it

    from flows.pipeline import FLOWS  # imports prefect (see above)

    for f in FLOWS:
        props = parameter_schema(f.fn).model_dump()["properties"]
        assert "`amoe params [SECTION]`" in props["overrides"]["description"], f.name
        assert props["params_file"]["description"], f.name


@pytest.mark.parametrize("width", [120, 160])  # narrower: the key and type columns alone may not fit
def test_table_fits_the_width(width) -> None:
    lines = describe(None, width).splitlines()
    assert max(len(line) for line in lines) <= width
