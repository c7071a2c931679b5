"""Zero-shot through a SigLIP2 text tower: a tiny random-weight `Siglip2Model` saved with a BPE tokenizer (built with
the `tokenizers` library, loaded back by transformers as its Siglip2Tokenizer) and its image processor. The
platform's predictions on the teacher's features must equal transformers' own `Siglip2Model(...).logits_per_image`
arg-max on the same images and prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amoe_core.config import TeacherSpec, validate_params
from amoe_core.errors import AmoeError
from amoe_core.eval import evaluate as ev
from amoe_core.eval.datasets import load_labelled
from amoe_core.eval.features import extract_summaries, teacher_extractor
from amoe_core.eval.text_tower import load_text_tower
from amoe_core.eval.zero_shot import canonicalize, class_embeddings, class_names, predict, prompts
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.tracking.runs import RunDir

CLASSES = ["black_cat", "red_car", "tall_tree", "white_dog"]
TEMPLATES = ["{}", "a photo of a {}.", "this is the {}!"]
PATCH, RES = 16, 64  # the student patch size (teachers see its grid); 4x4 patches: the processor keeps the size


def _tokenizer(words: list[str]):
    """A Gemma-style BPE (lower case, spaces as ▁, byte fallback): the layout Siglip2Tokenizer rebuilds on load."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    # small vocabulary: prompts become several sub-word tokens, not one token per sentence
    trainer = trainers.BpeTrainer(vocab_size=48, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tok.train_from_iterator(words, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        mask_token="<mask>",
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, TeacherSpec]:
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    root = tmp_path_factory.mktemp("zs")
    tok = _tokenizer(prompts([c.replace("_", " ") for c in CLASSES], TEMPLATES))
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = Siglip2Config(
        text_config={**small, "vocab_size": len(tok), "max_position_embeddings": 64, "pad_token_id": 0},
        vision_config={**small, "patch_size": PATCH, "num_patches": 16},
    )
    model = Siglip2Model(cfg).eval()
    model.save_pretrained(root / "sig")
    tok.save_pretrained(root / "sig")
    Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=16).save_pretrained(root / "sig")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 12)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):  # blotchy colour images: varied summaries, so the arg-max is spread over classes
                small_img = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                Image.fromarray(small_img).resize((RES, RES), Image.Resampling.BILINEAR).save(
                    root / split / c / f"{i}.png"
                )
    return root, TeacherSpec(name="sig", kind="siglip2", path=str(root / "sig"))


def test_canonicalisation_and_class_names(tmp_path):
    assert canonicalize("  A Photo of the RED-car!!\t ok ") == "a photo of the redcar ok"
    assert canonicalize("black_cat.") == "black cat"
    (tmp_path / "a_b").mkdir()
    assert class_names(f"folder:{tmp_path}", ["a_b", "c"]) == ["a b", "c"]
    (tmp_path / "classnames.txt").write_text("Alpha Beta\nGamma\n")
    assert class_names(f"folder:{tmp_path}", ["a_b", "c"]) == ["Alpha Beta", "Gamma"]
    with pytest.raises(AmoeError, match="2 names for 3 classes"):
        class_names(f"folder:{tmp_path}", ["a_b", "c", "d"])


def test_predictions_equal_transformers_siglip2_logits(setup, tmp_path):
    from transformers import AutoTokenizer, Siglip2ImageProcessor, Siglip2Model

    root, spec = setup
    data = load_labelled(f"folder:{root}/test")
    feats = extract_summaries(teacher_extractor("sig", load_teacher(spec)), data, RES, 16)["teacher:sig"]
    tower = load_text_tower(spec)
    assert type(tower.tokenizer).__name__ == "Siglip2Tokenizer"  # the released checkpoints' tokenizer class
    names = class_names(data.spec, data.classes)
    ours = predict(feats, class_embeddings(tower, names, TEMPLATES[1:2], tmp_path))

    # transformers alone: its image processor, its tokenizer padding to 64 after the text, its model's logits
    model = Siglip2Model.from_pretrained(spec.path).eval()
    images = [data.pil(i) for i in range(len(data))]
    pix = Siglip2ImageProcessor.from_pretrained(spec.path)(images=images, max_num_patches=16, return_tensors="pt")
    assert pix["spatial_shapes"].tolist() == [[4, 4]] * len(data)
    texts = [f"a photo of a {n}" for n in names]  # canonical form of "a photo of a {}."
    ids = AutoTokenizer.from_pretrained(spec.path)(texts, padding="max_length", max_length=64, padding_side="right")
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids["input_ids"]), **pix)
    logits = out.logits_per_image
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).numpy()  # float32 noise in logits (scale 10) is ~1e-5
    assert clear.sum() >= len(data) // 2, "too few images with a clear top-2 margin to compare"
    assert (ours[clear] == logits.argmax(-1).numpy()[clear]).all()
    assert len(set(ours.tolist())) > 1  # not a degenerate single-class answer
    # the teacher's summary is the model's image embedding (up to float32 summation order)
    np.testing.assert_allclose(feats, out.vision_model_output.pooler_output.numpy(), atol=1e-4)

    # several templates: per class the mean of the unit prompt embeddings, renormalised (transformers' embeddings)
    all_texts = prompts(names, TEMPLATES)
    ids = AutoTokenizer.from_pretrained(spec.path)(all_texts, padding="max_length", max_length=64, padding_side="right")
    with torch.no_grad():
        t = model.get_text_features(input_ids=torch.tensor(ids["input_ids"]))
    t = getattr(t, "pooler_output", t)
    ref = torch.nn.functional.normalize(torch.nn.functional.normalize(t, dim=-1).reshape(4, 3, -1).mean(1), dim=-1)
    ours_emb = class_embeddings(tower, names, TEMPLATES, tmp_path)
    np.testing.assert_allclose(ours_emb, ref.numpy(), atol=1e-5)  # float32, 2 layers: summation-order noise ~1e-7
    assert (tmp_path / "zero_shot").is_dir() and len(list((tmp_path / "zero_shot").glob("*.npy"))) == 2  # cached


def test_evaluate_writes_zero_shot_for_the_teacher(setup):
    root, spec = setup
    params = validate_params(
        {
            "teachers": [spec.model_dump(mode="json")],
            "packing": {"patch_size": 16},
            "distill": {"runs_dir": str(root / "runs")},
            "evaluate": {
                "datasets": [{"name": "toy", "train": f"folder:{root}/train", "test": f"folder:{root}/test"}],
                "resolutions": [RES],
                "main_resolution": RES,
                "ks": [1],
                "probe_epochs": 1,
                "pca_images": 2,
                "cache": str(root / "cache"),
                "zero_shot": {"teacher": "sig", "templates": TEMPLATES[1:2]},
            },
        }
    )
    ev.evaluate(params, RunDir(root / "runs" / "_teachers"), None)
    result = json.loads((root / "runs" / "_teachers" / "eval.json").read_text())
    data = load_labelled(f"folder:{root}/test")
    feats = extract_summaries(teacher_extractor("sig", load_teacher(spec)), data, RES, 16)["teacher:sig"]
    tower = load_text_tower(spec)
    emb = class_embeddings(tower, class_names(data.spec, data.classes), TEMPLATES[1:2], root / "other")
    expected = float((predict(feats, emb) == data.labels).mean())
    assert result["zero_shot"] == {"toy": {"teacher:sig": {f"{RES}px": pytest.approx(expected)}}}


def test_zero_shot_needs_a_siglip2_teacher_with_a_text_tower(setup, tmp_path):
    root, spec = setup
    from amoe_core.config import ConfigError

    with pytest.raises(ConfigError, match="zero_shot.teacher = 'dino': must name a teacher of kind siglip2"):
        validate_params({"evaluate": {"zero_shot": {"teacher": "dino"}}})  # the default dino is a dinov3
    # a name no teacher has validates (the default names the demo's siglip); evaluate skips zero-shot, saying why
    assert validate_params({"evaluate": {"zero_shot": {"teacher": "nope"}}}).evaluate.zero_shot.teacher == "nope"
    bank = ev.TeacherBank([spec], "cpu")
    assert bank.text_tower("nope") is None
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    Siglip2VisionModel(Siglip2VisionConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2)).save_pretrained(tmp_path / "vis")  # fmt: skip
    with pytest.raises(AmoeError, match="without a text tower; zero-shot needs a full Siglip2Model"):
        load_text_tower(TeacherSpec(name="v", kind="siglip2", path=str(tmp_path / "vis")))
    vision_only = ev.TeacherBank([TeacherSpec(name="v", kind="siglip2", path=str(tmp_path / "vis"))], "cpu")
    assert vision_only.text_tower("v") is None  # evaluation goes on without zero-shot (a warning says why)
