"""params.yaml validation: every bad value fails before work, exit code 2, one line naming field, value, allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amoe_core.cli import main
from amoe_core.config import Params, apply_override, dump_params, load_params
from amoe_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_matches_the_typed_defaults() -> None:
    """params.yaml is the single source of truth and must stay in sync with the config models' defaults."""
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert Params.model_validate(on_disk).model_dump(mode="json") == Params().model_dump(mode="json")


def test_overrides_parse_yaml_values_and_reach_nested_lists(tmp_path: Path) -> None:
    p = load_params(
        REPO / "params.yaml",
        ["ingest.max_side=256", "cluster.k=[50, 10, 5]", "teachers.1.patch_weight=0.5", "distill.compile=true"],
    )
    assert p.ingest.max_side == 256
    assert p.cluster.k == [50, 10, 5]
    assert p.teachers[1].patch_weight == 0.5
    assert p.distill.compile is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("ingest.max_side=-3", "invalid ingest.max_side = -3: Input should be greater than or equal to 16"),
        ("ingest.max_side=abc", "invalid ingest.max_side = 'abc'"),
        ("ingest.nope=1", "unknown key ingest.nope; allowed keys here: background,"),
        ("nope=1", "unknown key nope; allowed keys here: ablate, cluster, demo_pool,"),
        ("teachers.0.kind=vit", "invalid teachers.0.kind = 'vit': Input should be 'siglip2', 'dinov3', 'hf' or 'timm'"),
        ("cluster.k=[3, 5]", "resampling_steps needs one value per level (2 levels in k)"),
        ("loss.relational=kd", "invalid loss.relational = 'kd'"),
        ("teachers.7.kind=dinov3", "'7' is not an index of a list of 2 items"),
        # the MoE balance loss has one switch, its weight; the old second switch names its replacement
        ("student.overrides.aux_loss=true", "student.overrides.aux_loss was removed: set loss.balance_aux_weight > 0"),
    ],
)
def test_bad_values_exit_2_with_one_line(override: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "ingest", "--params", str(REPO / "params.yaml"), "-S", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err


def test_cross_field_rules_name_both_fields() -> None:
    with pytest.raises(ConfigError, match=r"min_tokens \(80\) must not exceed max_tokens \(64\)"):
        load_params(REPO / "params.yaml", ["packing.min_tokens=80"])
    with pytest.raises(ConfigError, match="teacher names must be unique"):
        load_params(REPO / "params.yaml", ["teachers.1.name=dino"])


def test_missing_or_malformed_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_override({}, "ingest.max_side")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"seed": 3}, "seed.x=1")


def test_dump_round_trips() -> None:
    p = load_params(REPO / "params.yaml", ["seed=7"])
    assert Params.model_validate(yaml.safe_load(dump_params(p))) == p


def test_renamed_resampling_keys_say_what_they_became(tmp_path: Path) -> None:
    """Issue 20 aligned the resampling keys with Vo et al.'s reference config; `resample_steps` also changed meaning
    (the first k-means now counts as step 0), so an old params file must not silently run one step short."""
    old = tmp_path / "params.yaml"
    old.write_text("cluster:\n  resample_steps: [1, 3, 3]\n")
    with pytest.raises(ConfigError, match=r"resample_steps was renamed to resampling_steps \(= old value \+ 1"):
        load_params(old)
