"""Student: packed forward equals each image alone, parameter counts, heads (incl. the frozen SigLIP2 pooling head)."""

import pytest
import torch
from transformers import Siglip2VisionConfig, Siglip2VisionModel

from amoe_core.config import LossConfig, Params, StudentConfig, TeacherSpec
from amoe_core.config.student import ARCHS, resolve_arch
from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.losses.distill_loss import DistillLoss
from amoe_core.model_info import count_parameters, print_model_info
from amoe_core.models.heads import TeacherDims
from amoe_core.models.student import build_student
from amoe_core.models.teachers.base import TeacherOutput
from amoe_core.models.teachers.siglip2 import Siglip2SummaryHead

P = 16
SIZES = [(2, 3), (4, 1), (3, 3), (1, 5), (2, 2)]  # (rows, cols) in patches: mixed sizes and aspect ratios


def _grid(h: int, w: int) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)


def pack(groups: list[list[int]], images: list[torch.Tensor], sizes: list[tuple[int, int]], length: int) -> PackedBatch:
    """Sequences of exactly `length` tokens holding the given images in order, padding at the end."""
    s = len(groups)
    patches = torch.zeros(s, length, 3 * P * P)
    coords = torch.zeros(s, length, 2, dtype=torch.long)
    ids = torch.full((s, length), -1)
    k = 0
    for si, group in enumerate(groups):
        pos = 0
        for i in group:
            n = images[i].shape[0]
            patches[si, pos : pos + n], coords[si, pos : pos + n], ids[si, pos : pos + n] = (
                images[i],
                _grid(*sizes[i]),
                k,
            )
            k, pos = k + 1, pos + n
    order = [i for g in groups for i in g]
    return PackedBatch(patches, coords, ids, torch.tensor([sizes[i] for i in order]))


def _siglip_head(dim: int = 32) -> Siglip2SummaryHead:
    torch.manual_seed(1)
    cfg = Siglip2VisionConfig(hidden_size=dim, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return Siglip2SummaryHead(Siglip2VisionModel(cfg).head)


def _student(max_images_per_seq: int | None = 3):
    torch.manual_seed(0)
    teachers = {"dino": TeacherDims(24, 4), "sig": TeacherDims(32, 0, _siglip_head())}
    model = build_student(StudentConfig(name="tiny", overrides={"depth": 2}), teachers, max_images_per_seq).eval()
    with torch.no_grad():  # the release zero-initialises output projections: non-zero ones exercise every path
        for p in model.parameters():
            if p.requires_grad and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


def test_packed_forward_equals_each_image_alone():
    model = _student()
    torch.manual_seed(2)
    images = [torch.rand(h * w, 3 * P * P) for h, w in SIZES]
    # 3 sequences of 12 tokens: [img0 6 + img1 4 + pad 2], [img2 9 + pad 3], [img3 5 + img4 4 + pad 3]
    batch = pack([[0, 1], [2], [3, 4]], images, SIZES, 12)
    out = model(batch)
    n_tok = sum(h * w for h, w in SIZES)
    assert out.summary.shape == (5, 128) and out.patches.shape == (n_tok, 128) and out.registers.shape == (5, 4, 128)
    assert out.teachers["dino"].registers.shape == (5, 4, 24) and out.teachers["sig"].registers is None
    assert out.teachers["sig"].summary.shape == (5, 32) and out.teachers["sig"].patches.shape == (n_tok, 32)
    tid = batch.token_image_id
    for i, (h, w) in enumerate(SIZES):
        alone = model(pack([[0]], [images[i]], [SIZES[i]], h * w))  # no padding at all
        pairs = [(out.summary[i], alone.summary[0]), (out.patches[tid == i], alone.patches),
                 (out.registers[i], alone.registers[0])]  # fmt: skip
        for name in ("dino", "sig"):
            a, b = out.teachers[name], alone.teachers[name]
            pairs += [(a.summary[i], b.summary[0]), (a.patches[tid == i], b.patches)]
        for got, ref in pairs:
            assert (got - ref).abs().max().item() < 1e-5


def test_router_load_and_balance_bias_update():
    model = _student().train()
    images = [torch.rand(h * w, 3 * P * P) for h, w in SIZES]
    out = model(pack([[0, 1], [2], [3, 4]], images, SIZES, 12))
    assert out.router_load.shape == (2, 8)
    torch.testing.assert_close(out.router_load.sum(-1), torch.ones(2))  # padding and unused slots are not routed
    n_real = sum(h * w for h, w in SIZES) + 5 * 5
    assert all(int(m.pending_load.sum()) == n_real * 2 for m in model.moe_layers)
    model.update_balance_bias(1e-3)
    assert all(int(m.pending_load.sum()) == 0 and m.expert_bias.abs().sum() > 0 for m in model.moe_layers)


def test_balance_aux_weight_alone_switches_the_balance_loss_on():
    """One switch for the MoE balance loss: it enters the objective exactly when loss.balance_aux_weight > 0."""
    model = _student().train()
    images = [torch.rand(h * w, 3 * P * P) for h, w in SIZES]
    batch = pack([[0, 1], [2], [3, 4]], images, SIZES, 12)
    out = model(batch)
    torch.testing.assert_close(out.aux_loss, sum(m.aux_loss for m in model.moe_layers))  # same sum, same order
    targets = {n: TeacherOutput(o.summary.detach(), o.patches.detach(), None if o.registers is None else
                                o.registers.detach()) for n, o in out.teachers.items()}  # fmt: skip
    specs = [TeacherSpec(name="dino", kind="dinov3", path="-"), TeacherSpec(name="sig", kind="siglip2", path="-")]
    off = DistillLoss(LossConfig(relational="none"), specs)(out, targets, batch.token_image_id)
    on = DistillLoss(LossConfig(relational="none", balance_aux_weight=0.5), specs)(out, targets, batch.token_image_id)
    assert "balance_aux" not in off and on["balance_aux"] is out.aux_loss
    # the feature terms are the same tensors in both, so the totals differ by exactly the weighted balance loss
    # up to one float32 rounding of the sum (tolerance: a few ulps of the total)
    torch.testing.assert_close(on["total"] - off["total"], 0.5 * out.aux_loss, rtol=1e-5, atol=1e-6)
    assert model.eval()(batch).aux_loss is None  # inference computes no balance loss


def test_too_many_images_and_too_few_registers_are_clear_errors():
    model = _student(max_images_per_seq=1)
    images = [torch.rand(h * w, 3 * P * P) for h, w in SIZES]
    with pytest.raises(AmoeError, match="holds 2 images"):
        model(pack([[0, 1]], images, SIZES, 10))
    with pytest.raises(AmoeError, match="set student.overrides.num_registers >= 8"):
        build_student(StudentConfig(name="tiny"), {"d": TeacherDims(16, 8)})
    with pytest.raises(ConfigError, match="unknown key student.overrides.width"):
        resolve_arch("tiny", {"width": 3})
    with pytest.raises(ConfigError, match="known configs"):
        resolve_arch("huge")


def _formula(arch, active: bool) -> int:
    d, hd, h = arch.dim, arch.head_dim, arch.heads
    embed = 3 * arch.patch_size**2 * d + (1 + arch.num_registers) * d  # bias-free projector, CLS + registers
    attn = 4 * d * h * hd + h  # q, k, v, o (no bias, parameter-free QK-norm) + one sink per head
    if arch.num_experts:
        experts = (arch.top_k if active else arch.num_experts) * 3 * d * arch.expert_hidden
        ffn = d * arch.num_experts + experts
    else:
        ffn = 3 * d * arch.dense_hidden
    norms = 2 * d if arch.norm_weights else 0
    return embed + arch.depth * (norms + attn + ffn) + d


@pytest.mark.parametrize("name", list(ARCHS))
def test_parameter_counts_match_formula(name):
    arch = ARCHS[name]
    counts = count_parameters(arch)
    assert counts["total"] == _formula(arch, active=False)
    assert counts["active"] == _formula(arch, active=True)


def test_released_sizes_and_model_info(capsys):
    small, large = count_parameters(ARCHS["siglino-moe-0.15B"]), count_parameters(ARCHS["siglino-moe-0.3B"])
    # the release's SigLino-MoE-0.3B: 503.5M backbone parameters, 153.2M active per token
    assert round(large["total"] / 1e5) == 5035 and round(large["active"] / 1e5) == 1532
    assert small["total"] == large["total"]  # same experts, only top-k differs
    assert large["active"] - small["active"] == 18 * 4 * 3 * 768 * 384
    print_model_info(["tiny", "siglino-moe-0.3B"], Params())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("tiny") and lines[0].endswith("*")
    assert f"active {large['active'] / 1e6:9.2f}M" in lines[1]
