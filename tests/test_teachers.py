"""Teacher wrappers: tiny SigLIP2 / DINOv3 / timm checkpoints saved in a temp dir load offline and give the
documented shapes, canonical token order and one clear error for bad paths and model types."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amoe_core.config import TeacherSpec
from amoe_core.errors import AmoeError
from amoe_core.models.teachers.base import token_chunks
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.models.teachers.siglip2 import to_patches

# Non-square and repeated grids (student patch 16): (rows, cols) = (3, 4), (2, 2), (3, 4), (1, 5).
SIZES = [(48, 64), (32, 32), (48, 64), (16, 80)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel

    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    Siglip2VisionModel(Siglip2VisionConfig(**small, patch_size=16, num_patches=16)).save_pretrained(root / "siglip2")
    DINOv3ViTModel(DINOv3ViTConfig(**small, patch_size=16, num_register_tokens=4)).save_pretrained(root / "dinov3")
    # patch 8: the teacher must resize student-grid images to its own grid
    DINOv3ViTModel(DINOv3ViTConfig(**small, patch_size=8, num_register_tokens=2)).save_pretrained(root / "dinov3_p8")
    return root


def images(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def n_tokens() -> int:
    return sum((h // 16) * (w // 16) for h, w in SIZES)


def test_siglip2_shapes_and_naflex_inputs(ckpts):
    from transformers import Siglip2VisionModel
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    t = load_teacher(TeacherSpec(name="sig", kind="siglip2", path=str(ckpts / "siglip2")))
    assert (t.dim, t.patch_size, t.num_registers, t.mean, t.std) == (32, 16, 0, (0.5,) * 3, (0.5,) * 3)
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    ims = images()
    out = t(ims)
    assert out.summary.shape == (4, 32) and out.patches.shape == (n_tokens(), 32) and out.registers is None

    # our patch layout is SigLIP2's own (image processor's convert_image_to_patches)
    assert torch.equal(to_patches(ims[0], 16), convert_image_to_patches(ims[0], 16))

    # reference: the plain HF model on one image at a time, normalised by hand
    ref = Siglip2VisionModel.from_pretrained(ckpts / "siglip2").eval()
    start = 0
    for i, im in enumerate(ims):
        r, c = im.shape[1] // 16, im.shape[2] // 16
        with torch.no_grad():
            o = ref(
                pixel_values=to_patches((im - 0.5) / 0.5, 16)[None],
                pixel_attention_mask=torch.ones(1, r * c, dtype=torch.long),
                spatial_shapes=torch.tensor([[r, c]]),
            )
        torch.testing.assert_close(out.summary[i], o.pooler_output[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.patches[start : start + r * c], o.last_hidden_state[0], atol=1e-5, rtol=1e-4)
        start += r * c


def test_siglip2_summary_head_matches_pooler_and_passes_gradients(ckpts):
    t = load_teacher(TeacherSpec(name="sig", kind="siglip2", path=str(ckpts / "siglip2")))
    ims = images(1)
    out = t(ims)
    # pad the per-image patch tokens into [n, N, D] + mask: the head must reproduce pooler_output
    lengths = [(h // 16) * (w // 16) for h, w in SIZES]
    tokens = torch.zeros(len(ims), max(lengths), t.dim)
    mask = torch.zeros(len(ims), max(lengths), dtype=torch.bool)
    for i, chunk in enumerate(out.patches.split(lengths)):
        tokens[i, : len(chunk)], mask[i, : len(chunk)] = chunk, True
    head = copy.deepcopy(t.summary_head)  # what the student keeps: a frozen copy
    head.train()
    assert not head.training and all(not p.requires_grad for p in head.parameters())
    torch.testing.assert_close(head(tokens, mask), out.summary, atol=1e-5, rtol=1e-4)
    tokens.requires_grad_(True)
    head(tokens, mask).sum().backward()
    assert tokens.grad is not None and tokens.grad[mask].abs().sum() > 0
    assert tokens.grad[~mask].abs().sum() == 0  # padding gets no gradient: it is masked out of the pooling


def test_dinov3_shapes_registers_and_canonical_order(ckpts):
    from transformers import DINOv3ViTModel

    t = load_teacher(TeacherSpec(name="dino", kind="dinov3", path=str(ckpts / "dinov3")))
    assert (t.dim, t.patch_size, t.num_registers) == (32, 16, 4)
    assert t.mean == (0.485, 0.456, 0.406) and t.summary_head is None
    ims = images(2)
    out = t(ims)
    assert out.summary.shape == (4, 32) and out.patches.shape == (n_tokens(), 32)
    assert out.registers.shape == (4, 4, 32)
    ref = DINOv3ViTModel.from_pretrained(ckpts / "dinov3").eval()
    mean, std = torch.tensor(t.mean).view(3, 1, 1), torch.tensor(t.std).view(3, 1, 1)
    start = 0
    for i, im in enumerate(ims):
        with torch.no_grad():
            h = ref(pixel_values=((im - mean) / std)[None]).last_hidden_state[0]
        n = (im.shape[1] // 16) * (im.shape[2] // 16)
        torch.testing.assert_close(out.summary[i], h[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.registers[i], h[1:5], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.patches[start : start + n], h[5:], atol=1e-5, rtol=1e-4)
        start += n
    # batching images of equal size together changes nothing: one image alone gives the same features
    torch.testing.assert_close(t([ims[2]]).summary[0], out.summary[2], atol=1e-5, rtol=1e-4)


def test_teacher_with_other_patch_size_aligns_to_student_grid(ckpts):
    t = load_teacher(TeacherSpec(name="d8", kind="dinov3", path=str(ckpts / "dinov3_p8")))
    assert (t.patch_size, t.num_registers) == (8, 2)
    ims = images(3)
    out = t(ims)
    assert out.patches.shape == (n_tokens(), 32) and out.registers.shape == (4, 2, 32)
    # each 16-px student patch maps to one 8-px teacher patch: the image is downsampled 2x first
    half = [F.interpolate(im[None], scale_factor=0.5, mode="bilinear", antialias=True)[0] for im in ims]
    t.student_patch_size = 8
    torch.testing.assert_close(t(half).patches, out.patches, atol=1e-5, rtol=1e-4)


def test_generic_hf_kind_and_explicit_grid(ckpts):
    t = load_teacher(TeacherSpec(name="any", kind="hf", path=str(ckpts / "dinov3")))
    d = load_teacher(TeacherSpec(name="dino", kind="dinov3", path=str(ckpts / "dinov3")))
    ims = images(4)
    a, b = t(ims), d(ims)
    torch.testing.assert_close(a.patches, b.patches)
    torch.testing.assert_close(a.registers, b.registers)
    grid = torch.tensor([[h // 16, w // 16] for h, w in SIZES])
    torch.testing.assert_close(t(ims, grid).summary, a.summary)
    # a SigLIP2 checkpoint under kind "hf" still gets NaFlex inputs
    assert load_teacher(TeacherSpec(name="s", kind="hf", path=str(ckpts / "siglip2"))).kind == "siglip2"


def test_timm_teacher_matches_forward_features(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, reg_tokens=2, depth=2)
    save_for_hf(m, tmp_path / "vit", safe_serialization=True)
    t = load_teacher(TeacherSpec(name="vit", kind="timm", path=str(tmp_path / "vit")))
    assert not t.training and all(not p.requires_grad for p in t.parameters())  # frozen by load_teacher
    assert (t.dim, t.patch_size, t.num_registers) == (192, 16, 2)
    ims = images(5)
    out = t(ims)
    assert out.summary.shape == (4, 192) and out.patches.shape == (n_tokens(), 192)
    assert out.registers.shape == (4, 2, 192)
    ref = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, reg_tokens=2, depth=2, dynamic_img_size=True
    ).eval()
    ref.load_state_dict(m.state_dict())
    mean, std = torch.tensor(t.mean).view(3, 1, 1), torch.tensor(t.std).view(3, 1, 1)
    with torch.no_grad():
        f = ref.forward_features(((ims[3] - mean) / std)[None])[0]
    torch.testing.assert_close(out.patches[-5:], f[3:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.registers[3], f[1:3], atol=1e-5, rtol=1e-4)


def test_bad_paths_and_model_types(ckpts, tmp_path):
    cases = [
        (TeacherSpec(name="x", kind="dinov3", path=str(tmp_path / "missing" / "dir")), "does not exist"),
        (TeacherSpec(name="x", kind="siglip2", path=str(tmp_path)), "no config.json"),
        (TeacherSpec(name="x", kind="dinov3", path=str(ckpts / "siglip2")), "kind 'dinov3' needs"),
        (TeacherSpec(name="x", kind="siglip2", path=str(ckpts / "dinov3")), "kind 'siglip2' needs"),
        (TeacherSpec(name="x", kind="siglip2", path="google/siglip2-base-patch16-naflex"), "cannot fetch hub id"),
        (TeacherSpec(name="x", kind="timm", path=str(tmp_path / "nope")), "neither a directory"),
    ]
    (tmp_path / "weights.txt").write_text("x")
    cases.append((TeacherSpec(name="x", kind="hf", path=str(tmp_path / "weights.txt")), "is a file"))
    bert = tmp_path / "bert"
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(bert)
    cases.append((TeacherSpec(name="x", kind="hf", path=str(bert)), "no patch_size"))
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "not_a_real_model"}')
    cases.append((TeacherSpec(name="x", kind="hf", path=str(unknown)), "unsupported model"))
    for spec, message in cases:
        with pytest.raises(AmoeError, match=message) as e:
            load_teacher(spec)
        assert "\n" not in str(e.value) and "teacher 'x'" in str(e.value)


def test_images_off_the_student_grid_are_rejected(ckpts):
    t = load_teacher(TeacherSpec(name="dino", kind="dinov3", path=str(ckpts / "dinov3")))
    with pytest.raises(AmoeError, match="multiples of the student patch size 16"):
        t([torch.rand(3, 40, 64)])


def test_naflex_batches_bound_their_padding_and_keep_every_image_once():
    """Images sorted by length go into consecutive batches; each batch's padded size (count x longest) stays within
    the token budget and within (1 + max_padding) x its real tokens, unless it is a single image."""
    rng = np.random.default_rng(0)
    lengths = sorted(int(x) for x in np.exp(rng.uniform(np.log(4), np.log(64), 300)))
    for budget, max_padding in ((65536, 0.25), (512, 0.25), (65536, None), (100, 0.0)):
        chunks = token_chunks(list(range(len(lengths))), lengths, budget, max_padding)
        assert [i for c in chunks for i in c] == list(range(len(lengths)))
        for c in chunks:
            padded, real = len(c) * max(lengths[i] for i in c), sum(lengths[i] for i in c)
            assert len(c) == 1 or padded <= budget
            assert len(c) == 1 or max_padding is None or padded <= (1 + max_padding) * real
    # without a padding bound, one budget-sized batch: today's behaviour for equal-grid teachers
    assert len(token_chunks(list(range(len(lengths))), lengths, 65536)) == 1
