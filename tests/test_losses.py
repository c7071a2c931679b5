"""Losses: ARKD / RKD hand-computed values and gradient signs, per-image feature averaging, DistillLoss terms, and the
2-process gloo check that DDP-averaged gradients equal the single-process gradient of the global loss."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amoe_core.config import LossConfig, TeacherSpec
from amoe_core.losses.distill_loss import DistillLoss
from amoe_core.losses.features import patch_per_image
from amoe_core.losses.relational import arkd_from_distances, arkd_loss, rkd_loss
from amoe_core.models.student import StudentOutput
from amoe_core.models.teachers.base import TeacherOutput

T = torch.tensor([[0.0], [1.0], [3.0]])  # teacher distances 1, 3, 2 -> / mean 2 -> 0.5, 1.5, 1.0; median 1.0


def test_arkd_hand_computed():
    # student distances 2, 3, 1 -> 1.0, 1.5, 0.5. Pair (0,1) close (0.5 < 1): shrink 0.5 -> h = 0.125.
    # (0,2) far: expand 0. (1,2) far (1.0 >= 1): expand 0.5 -> 0.125. Ordered pairs count twice: 0.5 / (3*2).
    s = torch.tensor([[0.0], [2.0], [3.0]])
    assert arkd_loss(s, T).item() == pytest.approx(1 / 12, abs=1e-6)
    # student distances 0.5, 3, 2.5 -> 0.25, 1.5, 1.25: the close pair got closer, the far pairs farther: ARKD 0,
    # while symmetric RKD penalises both deviations: 2 * (0.5 * 0.25^2) * 2 / 6.
    s = torch.tensor([[0.0], [0.5], [3.0]])
    assert arkd_loss(s, T).item() == pytest.approx(0.0, abs=1e-7)
    assert rkd_loss(s, T).item() == pytest.approx(2 * 2 * 0.5 * 0.25**2 / 6, abs=1e-6)


def test_arkd_is_invariant_to_global_scale_and_dimension():
    torch.manual_seed(0)
    s, t = torch.randn(10, 8), torch.randn(10, 32)
    assert arkd_loss(3.0 * s, t).item() == pytest.approx(arkd_loss(s, t).item(), rel=1e-5)
    assert arkd_loss(s, t).item() > 0


@pytest.mark.parametrize(
    "pair, ds_value, grad_sign",
    [
        ((0, 1), 0.8, +1),  # close pair (dt 0.5 < m) with ds > dt: pulled together (gradient > 0)
        ((0, 1), 0.3, 0),  # close pair with ds < dt: no gradient
        ((0, 2), 1.2, -1),  # far pair (dt 1.5 >= m) with ds < dt: pushed apart (gradient < 0)
        ((0, 2), 1.9, 0),  # far pair with ds > dt: no gradient
    ],
)
def test_arkd_gradient_signs(pair, ds_value, grad_sign):
    dt = torch.tensor([[0.0, 0.5, 1.5], [0.5, 0.0, 1.0], [1.5, 1.0, 0.0]])
    off = ~torch.eye(3, dtype=torch.bool)
    ds = dt.clone()
    i, j = pair
    ds[i, j] = ds[j, i] = ds_value
    ds.requires_grad_(True)
    arkd_from_distances(ds, dt, off).backward()
    g = ds.grad
    assert torch.sign(g[i, j]).item() == grad_sign and torch.sign(g[j, i]).item() == grad_sign
    others = torch.ones(3, 3, dtype=torch.bool)
    others[i, j] = others[j, i] = False
    assert torch.all(g[others] == 0)  # the other pairs sit exactly on their targets


def test_patch_loss_counts_each_image_once():
    pred = torch.zeros(10, 4)
    target = torch.cat(
        [torch.full((1, 4), 2.0), torch.ones(9, 4)]
    )  # image 0: 1 token error 4; image 1: 9 tokens error 1
    tid = torch.tensor([0] + [1] * 9)
    per_image = patch_per_image(pred, target, tid, 2)
    torch.testing.assert_close(per_image, torch.tensor([4.0, 1.0]))  # mean over images = 2.5 (token mean would be 1.3)


def _outputs(seed: int, n: int, tokens: list[int], d: int = 6, regs: int = 2):
    g = torch.Generator().manual_seed(seed)
    tid = torch.repeat_interleave(torch.arange(n), torch.tensor(tokens))
    out = TeacherOutput(
        torch.randn(n, d, generator=g), torch.randn(len(tid), d, generator=g), torch.randn(n, regs, d, generator=g)
    )
    return out, tid


SPECS = [
    TeacherSpec(name="dino", kind="dinov3", path="x", summary_weight=1.0, patch_weight=2.0, register_weight=0.5),
    TeacherSpec(name="sig", kind="siglip2", path="y", summary_weight=0.5, patch_weight=1.0),
]


def test_distill_loss_terms_and_total():
    pred_d, tid = _outputs(0, 3, [1, 4, 2])
    tgt_d, _ = _outputs(1, 3, [1, 4, 2])
    pred_s, _ = _outputs(2, 3, [1, 4, 2])
    tgt_s, _ = _outputs(3, 3, [1, 4, 2])
    tgt_s.registers = None
    student = StudentOutput(torch.zeros(3, 4), torch.zeros(7, 4), torch.zeros(3, 2, 4), {"dino": pred_d, "sig": pred_s})
    loss = DistillLoss(LossConfig(relational="arkd", relational_weight=0.3), SPECS)
    terms = loss(student, {"dino": tgt_d, "sig": tgt_s}, tid)
    assert set(terms) == {
        "dino/summary", "dino/patch", "dino/registers", "dino/relational",
        "sig/summary", "sig/patch", "sig/relational", "relational", "total",
    }  # fmt: skip
    per_img = [((pred_d.patches[tid == i] - tgt_d.patches[tid == i]) ** 2).mean() for i in range(3)]
    assert terms["dino/patch"].item() == pytest.approx(torch.stack(per_img).mean().item(), rel=1e-6)
    assert terms["dino/registers"].item() == pytest.approx(((pred_d.registers - tgt_d.registers) ** 2).mean().item())
    rel = arkd_loss(pred_d.summary, tgt_d.summary) + arkd_loss(pred_s.summary, tgt_s.summary)
    assert terms["relational"].item() == pytest.approx(rel.item(), rel=1e-6)
    expected = (
        terms["dino/summary"] + 2 * terms["dino/patch"] + 0.5 * terms["dino/registers"]
        + 0.5 * terms["sig/summary"] + terms["sig/patch"] + 0.3 * rel
    )  # fmt: skip
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    none = DistillLoss(LossConfig(relational="none"), SPECS)(student, {"dino": tgt_d, "sig": tgt_s}, tid)
    assert "relational" not in none


# ---------------------------------------------------------------------------------------------- distributed
RANK_TOKENS = [[3, 1, 2], [5, 2]]  # different image counts and sizes per rank


def _global_loss_grad(weight: torch.Tensor, rank_data: list) -> torch.Tensor:
    """Single process over the whole global batch."""
    w = weight.clone().requires_grad_(True)
    feats, tgts, tids, offset = [], [], [], 0
    for x_s, x_p, tgt, tid in rank_data:
        feats.append((x_s @ w, x_p @ w))
        tgts.append(tgt)
        tids.append(tid + offset)
        offset += x_s.shape[0]
    pred = TeacherOutput(torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats]), None)
    tgt = TeacherOutput(torch.cat([t.summary for t in tgts]), torch.cat([t.patches for t in tgts]), None)
    student = StudentOutput(pred.summary, pred.patches, pred.summary[:, None], {"sig": pred})
    terms = DistillLoss(LossConfig(relational="arkd"), SPECS[1:])(student, {"sig": tgt}, torch.cat(tids))
    terms["total"].backward()
    return w.grad


def _rank_data(rank: int):
    tokens = RANK_TOKENS[rank]
    g = torch.Generator().manual_seed(100 + rank)
    n, t = len(tokens), sum(tokens)
    tid = torch.repeat_interleave(torch.arange(n), torch.tensor(tokens))
    tgt = TeacherOutput(torch.randn(n, 4, generator=g), torch.randn(t, 4, generator=g), None)
    return torch.randn(n, 5, generator=g), torch.randn(t, 5, generator=g), tgt, tid


def _worker(rank: int, world: int, init_file: str, weight: torch.Tensor, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x_s, x_p, tgt, tid = _rank_data(rank)
        w = weight.clone().requires_grad_(True)
        pred = TeacherOutput(x_s @ w, x_p @ w, None)
        student = StudentOutput(pred.summary, pred.patches, pred.summary[:, None], {"sig": pred})
        terms = DistillLoss(LossConfig(relational="arkd"), SPECS[1:])(student, {"sig": tgt}, tid)
        terms["total"].backward()
        grad = w.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # what DDP does
        total = terms["total"].detach().clone()
        dist.all_reduce(total)
        torch.save({"grad": grad, "total": total / world}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gradient_equals_single_process_gradient():
    weight = torch.randn(5, 4, generator=torch.Generator().manual_seed(7))
    expected = _global_loss_grad(weight, [_rank_data(0), _rank_data(1)])
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), weight, tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    for r in results:
        torch.testing.assert_close(r["grad"], expected, atol=1e-5, rtol=1e-4)
