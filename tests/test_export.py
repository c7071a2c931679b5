"""`amoe export`: a standalone directory that rebuilds the trained student with identical features."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from _train_setup import make_shards, make_teachers, tiny_params

from amoe_core.cli import main
from amoe_core.config import dump_params
from amoe_core.data.loader import build_loader
from amoe_core.errors import AmoeError
from amoe_core.models.trained import load_pretrained, load_student
from amoe_core.train import components
from amoe_core.train.distill import run
from amoe_core.train.export import export_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    params = tiny_params(root, make_teachers(root / "teachers"), make_shards(root / "shards", n=24), steps=2)
    run(params)
    return root, params


def _features(model, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(batch)
    feats = {"summary": out.summary, "patches": out.patches, "registers": out.registers}
    for name, t in out.teachers.items():
        feats[f"{name}/summary"], feats[f"{name}/patches"] = t.summary, t.patches
    return feats


def test_export_round_trip_gives_identical_features(trained, tmp_path) -> None:
    root, params = trained
    params_file = tmp_path / "params.yaml"
    params_file.write_text(dump_params(params))
    assert main(["export", "t", "--params", str(params_file), "--out", str(tmp_path / "exp")]) == 0
    exported = tmp_path / "exp"
    # no optimizer state; the marker lets a later export replace it (amoe_core/outputs.py)
    assert sorted(p.name for p in exported.iterdir()) == [".amoe-output.json", "config.json", "model.safetensors"]
    assert json.loads((exported / "config.json").read_text())["source"]["step"] == 2

    batch = next(iter(build_loader(params.packing, params.distill.shards, None, 1, 0, 1)))
    reference, dims, phis = load_student(root / "runs" / "t")
    from_export = load_pretrained(exported)
    via_timm = timm.create_model("amoe_student", pretrained=True, pretrained_cfg_overlay=dict(file=str(exported)))
    ref = _features(reference, batch)
    assert {"dino/summary", "siglip/summary", "siglip/patches"} <= set(ref)
    for model in (from_export, via_timm):
        got = _features(model, batch)
        for k, v in ref.items():
            assert torch.equal(got[k], v), k

    # trained, not a fresh init; PHI-S fitted and invertible back to the teacher's space
    fresh = components.build(params, components.load_teachers(params, torch.device("cpu")), torch.device("cpu"))
    assert not torch.equal(_features(fresh, batch)["summary"], ref["summary"])
    assert dims["dino"].num_registers == 4 and dims["siglip"].summary_head is not None
    raw = torch.randn(5, dims["dino"].dim)
    torch.testing.assert_close(phis["dino"]["patches"].inverse(phis["dino"]["patches"](raw)), raw, atol=1e-4, rtol=0)
    assert bool(phis["siglip"]["summary"].fitted)


def test_export_errors_name_the_problem(trained, tmp_path) -> None:
    _, params = trained
    with pytest.raises(AmoeError, match="no distill run 'nope'"):
        export_run(params, "nope")
    with pytest.raises(AmoeError, match="not an exported student"):
        load_pretrained(tmp_path)
