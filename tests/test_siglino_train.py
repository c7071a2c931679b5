"""Continue distilling a released SigLino checkpoint: `student.init` from the fixture, a few real distillation steps
(plus a new teacher whose adapter starts fresh), export in the release format, reload, same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _train_setup import make_shards, save_dinov3, save_siglip2, tiny_params
from safetensors.torch import load_file

from amoe_core.cli import main
from amoe_core.config import dump_params
from amoe_core.errors import AmoeError
from amoe_core.models.release import siglino
from amoe_core.models.release import weights as siglino_weights
from amoe_core.models.trained import load_student
from amoe_core.tracking.runs import RunDir
from amoe_core.train import components
from amoe_core.train.distill import run
from amoe_core.train.export import export_run

FIXTURE = Path("/work/shared/fixtures/siglino/moe-tiny")
FIXTURE_ARCH = {"depth": 2, "dim": 64, "heads": 4, "head_dim": 16, "num_experts": 6, "expert_hidden": 32, "top_k": 2}


def _teachers(root: Path) -> list[dict]:
    """Teachers with the fixture's widths (SigLIP2 64 with the release's 16-head / 4304 pooling head, DINOv3 48),
    and an extra DINOv3-kind teacher the release does not know (width 32)."""
    torch.manual_seed(0)
    save_siglip2(root / "siglip2", width=64, heads=16, mlp=4304)
    save_dinov3(root / "dinov3", width=48)
    save_dinov3(root / "extra", width=32)
    return [
        {"name": "siglip2", "kind": "siglip2", "path": str(root / "siglip2")},
        {"name": "dinov3", "kind": "dinov3", "path": str(root / "dinov3"), "register_weight": 1.0},
        {"name": "extra", "kind": "dinov3", "path": str(root / "extra")},
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not FIXTURE.is_dir():
        pytest.skip(f"no SigLino fixture at {FIXTURE}")
    root = tmp_path_factory.mktemp("siglino-train")
    params = tiny_params(root, _teachers(root / "teachers"), make_shards(root / "shards", n=48), steps=12)
    params.student.overrides = FIXTURE_ARCH
    params.student.init = FIXTURE / "checkpoint.pt"
    params.distill.checkpoint_every = 12
    run(params)
    return root, params


def test_init_loads_released_weights_and_new_teacher_starts_fresh(trained) -> None:
    _, params = trained
    release = torch.load(FIXTURE / "checkpoint.pt", map_location="cpu", weights_only=True)
    student = components.build(params, components.load_teachers(params, torch.device("cpu")), torch.device("cpu"))
    ours = siglino_weights.to_release(student)
    for key in ("img_projector.weight", "layers.1.moe.experts.w2", "dinov3_adapter.fc2.weight", "cls_token"):
        assert torch.equal(ours[key], release[key]), key
    assert not torch.equal(student.adapters["extra"].fc1.weight[:, :32], release["dinov3_adapter.fc1.weight"][:32, :32])


def test_distillation_from_release_lowers_the_loss_and_exports_the_release_format(trained, tmp_path) -> None:
    root, params = trained
    records = RunDir(root / "runs" / "t").metrics()
    losses = [r["loss/total"] for r in records]
    # fresh adapters of a random-weight backbone fit their targets fast: the last steps are well below the first
    # (measured: 0.57x over 12 steps, falling at every step); the 0.9 bound leaves room for batch-to-batch noise
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    (tmp_path / "params.yaml").write_text(dump_params(params))
    out = tmp_path / "release"
    assert (
        main(["export", "t", "--format", "siglino", "--out", str(out), "--params", str(tmp_path / "params.yaml")]) == 0
    )
    written = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    release = torch.load(FIXTURE / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in release.items()}  # "extra" left out
    assert not torch.equal(written["layers.0.attention.wq.weight"], release["layers.0.attention.wq.weight"])

    reloaded = siglino.load(out)
    trained_student, _, _ = load_student(root / "runs" / "t")
    inp = load_file(str(FIXTURE / "inputs.safetensors"))
    args = (inp["pixel_values"], inp["padding_mask"], inp["spatial_shapes"])
    with torch.no_grad():
        a, b = siglino.SigLino(trained_student)(*args), reloaded(*args)
    ours = siglino.load(export_run(params, "t", tmp_path / "amoe-export"))  # our own safetensors export
    with torch.no_grad():
        c = ours(*args)
    for kind in b:
        for t in b[kind]:
            assert torch.equal(c[kind][t], a[kind][t])  # the same student, rebuilt from its spec
            # same weights and graph; float32 summation order differs (the run's student reserves prefix slots for 8
            # images per sequence, the reloaded one for 1) and the release's pooling head has LayerNorm eps 1e-5
            # where the tiny SigLIP2 teacher's has 1e-6: measured max abs difference ~5e-7
            torch.testing.assert_close(a[kind][t], b[kind][t], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------ continuing
def _student(arch: dict) -> siglino.Student:
    from amoe_core.config.student import resolve_arch

    return siglino.release_student(resolve_arch("tiny", arch), {"siglip2": 64, "dinov3": 48})


@pytest.mark.parametrize(
    "change, field",
    [({"top_k": 3}, "top_k"), ({"route_norm": True}, "route_norm"), ({"route_scale": 2.5}, "route_scale"),
     ({"norm_eps": 1e-6}, "norm_eps"), ({"depth": 3}, "n_layers")],
)  # fmt: skip
def test_init_refuses_a_student_whose_architecture_differs(change: dict, field: str) -> None:
    """top_k, route_norm, route_scale and norm_eps leave every shape alone: only the checkpoint's config tells."""
    if not FIXTURE.is_dir():
        pytest.skip(f"no SigLino fixture at {FIXTURE}")
    wrong = _student({**FIXTURE_ARCH, **change})
    with pytest.raises(AmoeError) as err:
        siglino.init_student(wrong, FIXTURE / "checkpoint.pt")
    message = str(err.value)
    assert "\n" not in message
    ours = next(iter(change.values()))
    checkpoint = json.loads((FIXTURE / "config.json").read_text())
    theirs = checkpoint.get(field, checkpoint["moe_args"].get(field))
    assert f"{field} {theirs} (checkpoint) vs {ours} (student)" in message, message
    assert message.count("(checkpoint)") == 1, message  # only the field that differs is named
    siglino.init_student(_student(FIXTURE_ARCH), FIXTURE / "checkpoint.pt")  # the matching config continues


def test_init_needs_the_checkpoint_config(tmp_path) -> None:
    if not FIXTURE.is_dir():
        pytest.skip(f"no SigLino fixture at {FIXTURE}")
    lone = tmp_path / "model.pt"
    lone.write_bytes((FIXTURE / "checkpoint.pt").read_bytes())
    with pytest.raises(AmoeError, match=r"no config.json beside it and not a released file name"):
        siglino.init_student(_student(FIXTURE_ARCH), lone)


def test_distill_with_a_different_architecture_exits_2_naming_the_field(trained, tmp_path, capsys) -> None:
    _, params = trained
    params = params.model_copy(deep=True)
    params.student.overrides = {**FIXTURE_ARCH, "top_k": 3}
    params.distill.run = "wrong-arch"
    (tmp_path / "params.yaml").write_text(dump_params(params))
    assert main(["distill", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("top_k 2 (checkpoint) vs 3 (student)" in line for line in err), err


def test_first_forward_of_a_continued_run_is_the_released_model(trained) -> None:
    """Every released output, summary and patches of both teachers and the backbone's own, from the student a run
    continued from the release builds (released pooling head included), before any step."""
    _, params = trained
    student = components.build(params, components.load_teachers(params, torch.device("cpu")), torch.device("cpu"))
    inp = load_file(str(FIXTURE / "inputs.safetensors"))
    ref = load_file(str(FIXTURE / "outputs.safetensors"))
    with torch.no_grad():
        out = siglino.SigLino(student.eval())(inp["pixel_values"], inp["padding_mask"], inp["spatial_shapes"])
    real = inp["padding_mask"].bool()
    keys = [f"{kind}.{t}" for kind in ("patch_features", "summary_features") for t in ("dinov3", "siglip2", "siglino")]
    assert sorted(ref) == sorted(keys)
    for key in keys:
        kind, t = key.split(".")
        got, want = out[kind][t], ref[key]
        if kind == "patch_features":  # the release also returns features at padded positions; compare real ones
            got, want = got[real], want[real]
        # same weights and graph in float32; only summation order differs (packed vs padded attention, per-expert vs
        # stacked matmuls; test_siglino measures ~5e-7 relative on features of magnitude ~1): 1e-5 is far above that
        # noise and below what a wrong head makes (the teacher's own pooling head: 1.03 relative; eps 1e-6: 4.8e-5)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=key)
