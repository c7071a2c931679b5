"""Packed teachers (issue 31): a SigLIP2 or DINOv3 teacher's one forward over the step's packed sequences equals
transformers' own forward of the same checkpoint on each image alone (CLS / registers / patches / pooled output)."""

from __future__ import annotations

import pytest
import torch

from amoe_core.config import TeacherSpec
from amoe_core.data.packed import PackedBatch
from amoe_core.data.packing import assemble
from amoe_core.data.resolution import patchify
from amoe_core.models.teachers.base import Teacher, to_patches
from amoe_core.models.teachers.loader import load_teacher

# 8 images, 8 distinct grids (rows, cols) incl. 1x1 and both orientations, packed 4 + 4 into 2 sequences of 36
# tokens (33 and 32 real: both end in padding).
GRIDS = [(3, 4), (2, 2), (1, 5), (4, 3), (2, 6), (5, 2), (1, 1), (3, 3)]
SEQS = [[0, 1, 2, 3], [4, 5, 6, 7]]
SEQ_LEN = 36
# Widths not multiples of 64 (head dims 20 and 24); registers 0 and 4; gated and plain MLPs; teacher patch 16 (the
# student's: the batch's own patches are the input) and 8 (each image resized to the teacher's grid first).
DINO = {
    "r0_w40": dict(hidden_size=40, num_attention_heads=2, num_register_tokens=0, patch_size=16),
    "r4_w72": dict(hidden_size=72, num_attention_heads=3, num_register_tokens=4, patch_size=16, use_gated_mlp=True),
    "r4_w40_p8": dict(hidden_size=40, num_attention_heads=2, num_register_tokens=4, patch_size=8),
}
# position tables 4x4 (upsampled for most grids) and 7x7 (downsampled for some)
SIGLIP = {
    "w40_t16": dict(hidden_size=40, num_attention_heads=2, num_patches=16, patch_size=16),
    "w72_t49": dict(hidden_size=72, num_attention_heads=3, num_patches=49, patch_size=16),
}
# Relative tolerance: float32 (eps 1.2e-7) through 2 tiny layers; the packed and per-image forwards run the same
# operations on the same weights and differ only in summation order (linear vs convolution patch embedding, GEMM
# blocking for other row counts, softmax over a masked longer row, the MAP head's masked keys), measured <= ~1e-6.
RTOL = 1e-5


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def packed_batch(seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    items = {}
    for i, (r, c) in enumerate(GRIDS):
        image = torch.rand(3, r * 16, c * 16, generator=g)
        patches, coords = patchify(image, 16)
        items[i] = {"patches": patches, "coords": coords, "grid": (r, c), "image": image, "key": str(i), "label": -1}
    return assemble(SEQS, items, SEQ_LEN, None)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to RTOL of each element or of the tensor's largest magnitude (elements near zero)."""
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * float(expected.abs().max()))


def dinov3(tmp_path, name: str) -> tuple[Teacher, torch.nn.Module]:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(1)
    cfg = DINOv3ViTConfig(intermediate_size=88, num_hidden_layers=2, layerscale_value=0.5, **DINO[name])
    DINOv3ViTModel(cfg).save_pretrained(tmp_path / name)
    teacher = load_teacher(TeacherSpec(name="dino", kind="dinov3", path=str(tmp_path / name)))
    return teacher, DINOv3ViTModel.from_pretrained(tmp_path / name).eval()


def siglip2(tmp_path, name: str) -> tuple[Teacher, torch.nn.Module]:
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(2)
    Siglip2VisionModel(Siglip2VisionConfig(intermediate_size=88, num_hidden_layers=2, **SIGLIP[name])).save_pretrained(
        tmp_path / name
    )
    teacher = load_teacher(TeacherSpec(name="sig", kind="siglip2", path=str(tmp_path / name)))
    return teacher, Siglip2VisionModel.from_pretrained(tmp_path / name).eval()


@pytest.mark.parametrize("name", sorted(DINO))
def test_packed_dinov3_equals_transformers_per_image(tmp_path, name):
    teacher, ref = dinov3(tmp_path, name)
    batch = packed_batch()
    out = teacher.forward_packed(batch)
    r_ = teacher.num_registers
    assert out.patches.shape == (batch.n_tokens, teacher.dim) and out.summary.shape == (len(GRIDS), teacher.dim)
    assert (out.registers is None) == (r_ == 0)
    start = 0
    for i, (r, c) in enumerate(GRIDS):
        with torch.no_grad():
            h = ref(pixel_values=teacher.to_teacher_input(batch.images[i], r, c)[None]).last_hidden_state[0]
        close(out.summary[i], h[0])
        if r_:
            close(out.registers[i], h[1 : 1 + r_])
        close(out.patches[start : start + r * c], h[1 + r_ :])
        start += r * c


@pytest.mark.parametrize("name", sorted(SIGLIP))
def test_packed_siglip2_equals_transformers_per_image(tmp_path, name):
    teacher, ref = siglip2(tmp_path, name)
    batch = packed_batch(1)
    out = teacher.forward_packed(batch)
    assert out.patches.shape == (batch.n_tokens, teacher.dim) and out.registers is None
    start = 0
    for i, (r, c) in enumerate(GRIDS):
        x = to_patches(teacher.to_teacher_input(batch.images[i], r, c), teacher.patch_size)
        with torch.no_grad():
            o = ref(
                pixel_values=x[None],
                pixel_attention_mask=torch.ones(1, r * c, dtype=torch.long),
                spatial_shapes=torch.tensor([[r, c]]),
            )
        close(out.summary[i], o.pooler_output[0])  # the MAP head over this image's tokens alone
        close(out.patches[start : start + r * c], o.last_hidden_state[0])
        start += r * c


def test_packed_teachers_build_one_mask_per_forward(tmp_path, monkeypatch):
    import amoe_core.models.packed_attention as pa

    built = []
    real = pa.packed_mask
    monkeypatch.setattr(pa, "packed_mask", lambda ids: built.append(ids) or real(ids))
    for teacher, _ in (dinov3(tmp_path, "r4_w72"), siglip2(tmp_path, "w40_t16")):
        built.clear()
        teacher.forward_packed(packed_batch())
        assert len(built) == 1  # 2 layers, one mask


def test_distillation_targets_come_from_the_packed_forward(tmp_path, monkeypatch):
    """What a training step runs (components.targets_fn) is the packed forward; it equals the per-size path."""
    from amoe_core.models.teachers.hf import HFTeacher
    from amoe_core.models.teachers.siglip2 import Siglip2Teacher
    from amoe_core.train import components

    teachers = {"dino": dinov3(tmp_path, "r4_w72")[0], "sig": siglip2(tmp_path, "w72_t49")[0]}
    batch = packed_batch(2)
    per_size = components.teacher_outputs(teachers, batch, packed=False)
    for cls in (HFTeacher, Siglip2Teacher):  # the per-size path must not run in a step
        monkeypatch.setattr(cls, "forward", lambda *a, **k: pytest.fail("per-size teacher forward in a step"))
    targets = components.targets_fn(teachers)(batch)
    for name, out in targets.items():
        close(out.summary, per_size[name].summary)
        close(out.patches, per_size[name].patches)
        if out.registers is not None:
            close(out.registers, per_size[name].registers)
