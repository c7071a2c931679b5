"""The demo SigLIP2 teacher's LiT text tower: trained with the sigmoid loss against frozen image features, it must
classify held-out images zero-shot far above its own random initialisation, and the full `Siglip2Model` directory
it is saved in must load offline in transformers and through the platform's text tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amoe_core.config import TeacherSpec
from amoe_core.config.demo_teachers import DemoTextConfig
from amoe_core.eval.text_tower import load_text_tower
from amoe_core.eval.zero_shot import prompts, zero_shot_accuracy
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.train.demo_teachers import text_tower as tt

CLASSES = ["red apple", "green frog", "yellow bus", "blue whale"]
FILLER = ["small", "big", "old", "cartoon", "drawing", "photo", "shiny", "happy"]
TEMPLATES = ["{}", "a picture of {}."]
DIM = 32


def features(seed: int, n_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image summaries around one random direction per class (the frozen tower's clusters), labels."""
    g = torch.Generator().manual_seed(0)  # the same 'image tower' for every call
    centres = torch.nn.functional.normalize(torch.randn(len(CLASSES), DIM, generator=g), dim=-1)
    g.manual_seed(1000 + seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    return centres[labels] + 0.35 * torch.randn(len(labels), DIM, generator=g), labels


def captions_for(labels: torch.Tensor, seed: int) -> list[tuple[str, ...]]:
    """Per image: the class keywords, and keywords plus a filler word (a title), as the demo's captions."""
    rng = np.random.default_rng(seed)
    return [(CLASSES[int(c)], f"{CLASSES[int(c)]} {rng.choice(FILLER)}") for c in labels]


def cfg() -> DemoTextConfig:
    return DemoTextConfig(vocab_size=96, width=32, heads=2, layers=1, steps=150, batch_size=32, lr=3e-3)


class Vision:  # the config fields the text model reads from the image tower
    hidden_size = DIM


def zero_shot(side: tt.TextSide, tok, feats: torch.Tensor, labels: torch.Tensor) -> float:
    from amoe_core.eval.text_tower import Siglip2TextTower

    tower = Siglip2TextTower("t", side.text_model, tok, "")
    emb = tower.encode(prompts(CLASSES, TEMPLATES)).reshape(len(CLASSES), len(TEMPLATES), -1).mean(1)
    emb = torch.nn.functional.normalize(emb, dim=-1).numpy()
    return zero_shot_accuracy(feats.numpy(), labels.numpy(), emb)


def test_trained_text_tower_beats_its_random_init_over_seeds():
    gaps = []
    for seed in range(3):
        feats, labels = features(seed, 40)
        caps = captions_for(labels, seed)
        tok = tt.temporary_tokenizer([c for cs in caps for c in cs], 96)
        trained, random, facts = tt.train_text_tower(cfg(), feats, caps, tok, Vision, seed)
        test_feats, test_labels = features(seed + 100, 25)  # held-out images: never captioned
        acc, acc0 = zero_shot(trained, tok, test_feats, test_labels), zero_shot(random, tok, test_feats, test_labels)
        gaps.append(acc - acc0)
        assert facts["unique_captions"] <= len(CLASSES) * (1 + len(FILLER)) and facts["steps"] == 150
    # measured: trained 1.00 on every seed, random 0.25-0.45 (one class or two for all); 0.4 leaves room for BLAS noise
    assert min(gaps) > 0.4, gaps


def test_sigmoid_loss_matches_its_definition():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    pos = torch.tensor([[True, False], [True, True]])
    # -log sigmoid(z) for positives, -log sigmoid(-z) for negatives, summed, over the batch size (2)
    want = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 / (1 + np.exp(-1.0))) + np.log(1 / (1 + np.exp(-0.5))))
    want = (want - np.log(1 / (1 + np.exp(-3.0)))) / 2
    assert tt.sigmoid_loss(logits, pos).item() == pytest.approx(want, rel=1e-6)


def test_saved_full_model_loads_offline_and_round_trips(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, Siglip2ImageProcessor, Siglip2Model, Siglip2VisionConfig, Siglip2VisionModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)
    vcfg = Siglip2VisionConfig(
        hidden_size=DIM, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16, num_patches=16
    )
    vision = Siglip2VisionModel(vcfg).eval()
    feats, labels = features(0, 10)
    caps = captions_for(labels, 0)
    tok = tt.temporary_tokenizer([c for cs in caps for c in cs], 96)
    side, _, _ = tt.train_text_tower(cfg(), feats, caps, tok, vcfg, 0, max_steps=5)
    model = tt.full_model(vision, side)
    out = tmp_path / "sig"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    Siglip2ImageProcessor(patch_size=16, max_num_patches=16).save_pretrained(out)

    spec = TeacherSpec(name="sig", kind="siglip2", path=str(out))
    tower = load_text_tower(spec)
    texts = prompts(CLASSES, TEMPLATES)
    with torch.no_grad():
        want = side.embed(tower.token_ids(texts))
    torch.testing.assert_close(tower.encode(texts), want, atol=1e-5, rtol=1e-5)  # the same weights, float32
    # transformers alone reads the directory back: the same text features, logit scale and bias as trained
    loaded = Siglip2Model.from_pretrained(out).eval()
    ids = AutoTokenizer.from_pretrained(out)(texts, padding="max_length", max_length=64, padding_side="right")
    with torch.no_grad():
        t = loaded.get_text_features(input_ids=torch.tensor(ids["input_ids"]))
    t = torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1)
    torch.testing.assert_close(t, want, atol=1e-5, rtol=1e-5)
    assert loaded.logit_bias.item() == pytest.approx(side.logit_bias.item())
    # and the image side still loads as the siglip2 teacher, with the image tower's own weights
    teacher = load_teacher(spec)
    img = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        ref = vision(
            pixel_values=torch.stack([tt_patches(img[0])]),
            pixel_attention_mask=torch.ones(1, 16, dtype=torch.long),
            spatial_shapes=torch.tensor([[4, 4]]),
        ).pooler_output
    # the teacher normalises with SigLIP's mean/std (0.5, 0.5); the reference does the same by hand
    torch.testing.assert_close(teacher(img).summary, ref, atol=1e-4, rtol=1e-4)


def tt_patches(image: torch.Tensor) -> torch.Tensor:
    from amoe_core.models.teachers.siglip2 import to_patches

    return to_patches((image - 0.5) / 0.5, 16)
