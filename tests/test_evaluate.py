"""`amoe evaluate`: the whole path on tiny real teachers (save_pretrained in a tmp dir) and real digit images.

Checks eval.json against kNN / probe computed directly from the teachers' features, the feature cache, the
cross-resolution CSV and PNGs, the student path (with a student that reproduces its teachers exactly), and errors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amoe_core.cli import main
from amoe_core.config import Params, validate_params
from amoe_core.errors import AmoeError
from amoe_core.eval import evaluate as ev
from amoe_core.eval.datasets import load_pair
from amoe_core.eval.features import Feats
from amoe_core.eval.knn import knn_accuracy
from amoe_core.eval.labels import LabelledFeatures
from amoe_core.tracking.runs import RunDir


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Params]:
    from sklearn.datasets import load_digits
    from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel

    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    DINOv3ViTModel(
        DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        patch_size=16, num_register_tokens=4, image_size=32)
    ).save_pretrained(root / "teachers/dinov3")  # fmt: skip
    Siglip2VisionModel(
        Siglip2VisionConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            patch_size=16, num_patches=16)
    ).save_pretrained(root / "teachers/siglip2")  # fmt: skip
    digits = load_digits()
    for split, (lo, hi) in {"train": (0, 320), "test": (500, 620)}.items():
        for i in range(lo, hi):
            if digits.target[i] >= 4:
                continue
            d = root / "digits" / split / str(digits.target[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(d / f"{i}.png")
    params = validate_params(
        {
            "teachers": [
                {"name": "dino", "kind": "dinov3", "path": str(root / "teachers/dinov3")},
                {"name": "siglip", "kind": "siglip2", "path": str(root / "teachers/siglip2")},
            ],
            "distill": {"runs_dir": str(root / "runs")},
            "evaluate": {
                "datasets": [
                    {"name": "digits", "train": f"folder:{root}/digits/train", "test": f"folder:{root}/digits/test"}
                ],
                "resolutions": [16, 32],
                "main_resolution": 32,
                "ks": [1, 5, 20],
                "probe_lrs": [0.1, 0.01],
                "probe_epochs": 5,
                "pca_images": 3,
                "cache": str(root / "cache"),
                "batch_size": 64,
            },
        }
    )
    return root, params


def _direct_teacher_features(params: Params, name: str, images: list[torch.Tensor]) -> np.ndarray:
    from amoe_core.models.teachers.loader import load_teacher

    teacher = load_teacher(params.teacher(name))
    with torch.no_grad():
        return torch.cat([teacher(images[i : i + 50]).summary for i in range(0, len(images), 50)]).numpy()


def test_teacher_baselines_match_direct_computation(setup, monkeypatch) -> None:
    root, params = setup
    assert main(["evaluate", "--teachers", "-q", "--params", str(_write(params, root))]) == 0
    out = RunDir(root / "runs/_teachers")
    result = json.loads(out.eval_file.read_text())
    assert set(result) == {"knn", "knn_per_class", "linear", "fidelity", "pca_maps"} and result["fidelity"] == {}
    assert set(result["knn"]["digits"]) == {"teacher:dino", "teacher:siglip"}
    assert set(result["knn"]["digits"]["teacher:dino"]) == {"16px", "32px"}
    assert set(result["linear"]["digits"]["teacher:siglip"]) == {"32px"}

    # kNN numbers equal the protocol applied to features computed here, independently of the cache and batching.
    train, test = load_pair(params.evaluate.datasets[0].train, params.evaluate.datasets[0].test, 5000, 0)
    for name in ("dino", "siglip"):
        ftr = _direct_teacher_features(params, name, [train.image(i, 32) for i in range(len(train))])
        fte = _direct_teacher_features(params, name, [test.image(i, 32) for i in range(len(test))])
        accs = knn_accuracy(LabelledFeatures(ftr, train.labels, fte, test.labels), [1, 5, 20])
        assert result["knn"]["digits"][f"teacher:{name}"]["32px"] == {f"k{k}": a for k, a in accs.items()}
        assert accs[5] > 0.5  # random-weight ViTs still cluster digits well above chance (0.25)
        # per class (main resolution, k20): weighted by each class's test images, the classes give the overall number
        per_class = result["knn_per_class"]["digits"][f"teacher:{name}"]["32px"]["k20"]
        assert sorted(per_class) == sorted(test.classes)
        weighted = sum(per_class[c] * (test.labels == i).sum() for i, c in enumerate(test.classes)) / len(test)
        assert weighted == pytest.approx(accs[20], abs=1e-12)  # sums of a few hundred fractions in float64
    for acc in _all_numbers(result["knn"]) + _all_numbers(result["linear"]):
        assert 0.0 <= acc <= 1.0

    rows = list(csv.DictReader((out.path / ev.RESOLUTION_CSV).open()))
    assert len(rows) == 2 * 2 * 3  # features x resolutions x ks
    assert {r["resolution"] for r in rows} == {"16", "32"}
    for png in (ev.PCA_FILE, ev.RESOLUTION_PNG):
        assert Image.open(out.path / png).size[0] > 100

    # Second run: every summary comes from the cache; teachers only run on the PCA sample images.
    seen: list[int] = []
    real = ev.teacher_extractor

    def counting(name, teacher):
        inner = real(name, teacher)
        return lambda images: (seen.append(len(images)), inner(images))[1]

    monkeypatch.setattr(ev, "teacher_extractor", counting)
    again = ev.run(params, teachers=True)
    assert again["knn"] == result["knn"]
    assert sum(seen) == 2 * params.evaluate.pca_images


def test_student_path_with_a_student_that_reproduces_its_teachers(setup) -> None:
    """student:<t> identical to teacher:<t> -> same kNN, fidelity 1.0; ensemble and native features evaluated."""
    root, params = setup
    bank = ev.TeacherBank(params.teachers, torch.device("cpu"))

    def student(images: torch.Tensor) -> dict[str, Feats]:
        out = {}
        for t in ("dino", "siglip"):
            f = bank.extractor(t)(images)[f"teacher:{t}"]
            out[f"student:{t}"] = f
        out["student:native"] = Feats(out["student:dino"].summary * 2, out["student:dino"].patches)
        return out

    run = RunDir.create(root / "runs", "copycat")
    result = ev.evaluate(params, run, student, torch.device("cpu"))
    teachers = (
        json.loads((root / "runs/_teachers/eval.json").read_text()) if (root / "runs/_teachers").exists() else None
    )
    assert set(result["knn"]["digits"]) == {"student:dino", "student:siglip", "student:native", "student:ensemble"}
    for t in ("dino", "siglip"):
        assert result["fidelity"][t] == pytest.approx({"summary_cos": 1, "patch_cos": 1, "cka": 1, "spearman": 1})
        if teachers:
            assert result["knn"]["digits"][f"student:{t}"] == teachers["knn"]["digits"][f"teacher:{t}"]
    # kNN is scale invariant (L2-normalised features): native = 2 x dino gives dino's numbers.
    assert result["knn"]["digits"]["student:native"] == result["knn"]["digits"]["student:dino"]
    assert json.loads(run.eval_file.read_text())["fidelity"]["dino"]["cka"] == pytest.approx(1.0)


def test_bad_inputs_exit_2_with_one_line(setup, tmp_path, capsys) -> None:
    root, params = setup
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a.png")
    p = str(_write(params, root))
    cases = [
        (["-S", f"evaluate.datasets.0.train=folder:{tmp_path / 'one'}"], "only one class ('only')"),
        (["-S", f"evaluate.datasets.0.test=folder:{tmp_path / 'missing'}"], "does not exist"),
        (["-S", "evaluate.resolutions=[24]"], "must be multiples of packing.patch_size = 16"),
    ]
    for extra, message in cases:
        assert main(["evaluate", "--teachers", "-q", "--params", p, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main(["evaluate", "nosuchrun", "-q", "--params", p]) == 2
    assert "no directory" in capsys.readouterr().err


def test_checkpoint_of_another_architecture_is_a_clear_error(setup, monkeypatch) -> None:
    """A state dict that does not fit the student (what load_state_dict raises) becomes one AmoeError."""
    root, params = setup

    def mismatched(run_dir, device="cpu"):
        raise RuntimeError("Error(s) in loading state_dict for Student:\n\tsize mismatch for blocks.0.attn.qkv.weight")

    monkeypatch.setattr(ev, "load_student", mismatched)
    RunDir.create(root / "runs", "other-arch")
    with pytest.raises(AmoeError, match=r"does not fit the student architecture .*size mismatch"):
        ev.run(params, run="other-arch")


def _write(params: Params, root: Path) -> Path:
    import yaml

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


def _all_numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _all_numbers(v)]
    return [float(tree)]


def test_real_student_features_through_packed_batches(setup) -> None:
    """An untrained tiny student (models.student) evaluated through pack_equal_images: every feature name appears,
    patches come back per image, and the student's raw-space adapter outputs are what fidelity compares."""
    from amoe_core.eval.features import student_extractor
    from amoe_core.models.heads import TeacherDims
    from amoe_core.models.student import build_student
    from amoe_core.models.teachers.loader import load_teacher

    root, params = setup

    dims = {s.name: TeacherDims.of(load_teacher(s)) for s in params.teachers}
    torch.manual_seed(0)
    student = build_student(params.student, dims, params.packing.max_images_per_seq).eval()
    pk = params.packing
    extract = student_extractor(student, pk.patch_size, pk.c_max, pk.max_images_per_seq)
    images = torch.rand(5, 3, 32, 32)
    feats = extract(images)
    assert feats["student:dino"].summary.shape == (5, dims["dino"].dim)
    assert feats["student:siglip"].patches.shape == (5, 4, dims["siglip"].dim)
    # Packing several images per sequence must not mix them: per-image forwards give the same features.
    single = extract(images[2:3])
    torch.testing.assert_close(
        single["student:native"].summary[0], feats["student:native"].summary[2], atol=1e-4, rtol=1e-4
    )
    result = ev.evaluate(params, RunDir.create(root / "runs", "untrained"), extract, torch.device("cpu"))
    assert set(result["fidelity"]) == {"dino", "siglip"}
    assert set(result["linear"]["digits"]) == {"student:dino", "student:siglip", "student:native", "student:ensemble"}


def test_released_siglino_model_is_evaluated_with_model_flag(setup) -> None:
    """`amoe evaluate --model siglino:CKPT`: the fixture model's siglip2 / dinov3 outputs take the configured
    teachers' names and kNN includes the ensemble protocol. The release's preprocessing upscales the 16 / 32 px test
    images to its minimum area (128 x 128), so the patch grids differ from the teachers': no fidelity."""
    fixture = Path("/work/shared/fixtures/siglino/moe-tiny")
    if not fixture.is_dir():
        pytest.skip("no SigLino fixture")
    root, params = setup
    p = str(_write(params, root))
    assert main(["evaluate", "--model", f"siglino:{fixture / 'checkpoint.pt'}", "-q", "--params", p]) == 0
    result = json.loads((root / "runs" / "siglino-checkpoint" / "eval.json").read_text())
    assert set(result["knn"]["digits"]) == {"student:dino", "student:siglip", "student:native", "student:ensemble"}
    assert result["fidelity"] == {}
    assert main(["evaluate", "--model", "clip:/x.pt", "-q", "--params", p]) == 2


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((224, 224), (224, 224)),  # inside the bounds: only rounded to the patch size
        ((150, 250), (144, 256)),  # rounded to multiples of 16 (9.4 -> 9, 15.6 -> 16 patches)
        ((230, 300), (224, 288)),  # rounded 224 x 304 exceeds 256^2: scale 1.026, floor to 14 x 18 patches
        ((512, 512), (256, 256)),  # above max 256^2: sqrt(512*512 / 256^2) = 2, floor(512 / 2 / 16) * 16
        ((32, 64), (96, 192)),  # below min 128^2: scale sqrt(16384 / 2048) = 2.83, ceil(90.5 / 16) * 16 = 96
    ],
)
def test_smart_resize_follows_the_released_rule(size, expected) -> None:
    from amoe_core.eval.features import smart_resize

    assert smart_resize(*size, 16, 128 * 128, 256 * 256) == expected


def test_class_frequencies_file_errors_name_the_key(tmp_path) -> None:
    from amoe_core.errors import ConfigError

    good = tmp_path / "freq.json"
    good.write_text(json.dumps({"bag": 2000, "tools": 3}))
    assert ev._class_frequencies(good) == {"bag": 2000, "tools": 3}
    for name, text in (("missing.json", None), ("list.json", "[1, 2]"), ("floats.json", '{"bag": 0.5}')):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match="evaluate.class_frequencies"):
            ev._class_frequencies(tmp_path / name)
