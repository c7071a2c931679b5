"""MoE FFN: dispatch equals a per-token reference; aux-loss-free balancing; grouped-GEMM path equals the loop."""

import pytest
import torch

from amoe_core.models.moe import MoEFFN


def reference_moe(moe: MoEFFN, x: torch.Tensor) -> torch.Tensor:
    """Loop over tokens and experts: pick top-k of (sigmoid score + bias), weight by the unbiased scores
    (renormalised over the top-k when route_norm) times route_scale."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        scores = torch.sigmoid(x[t] @ moe.router.gate.weight.T).detach()
        chosen = torch.topk(scores + moe.expert_bias, moe.top_k).indices.tolist()
        total = sum(float(scores[e]) for e in chosen) if moe.route_norm else 1.0
        for e in range(moe.num_experts):
            if e in chosen:
                ex = moe.experts[e]
                h = torch.nn.functional.silu(ex.w1.weight @ x[t]) * (ex.w3.weight @ x[t])
                out[t] += scores[e] / total * moe.route_scale * (ex.w2.weight @ h)
    return out


@pytest.mark.parametrize(("top_k", "route_norm", "route_scale"), [(1, False, 1.0), (2, False, 1.0), (3, True, 0.8)])
def test_moe_equals_token_expert_loop(top_k, route_norm, route_scale):
    torch.manual_seed(top_k)
    moe = MoEFFN(16, 24, 5, top_k, route_norm=route_norm, route_scale=route_scale, dispatch="loop")
    moe.expert_bias.copy_(torch.randn(5) * 0.3)  # the bias must steer selection but not the weights
    x = torch.randn(40, 16)
    torch.testing.assert_close(moe(x), reference_moe(moe, x), atol=1e-5, rtol=1e-5)
    load = moe.last_load
    assert int(load.sum()) == 40 * top_k


def test_grouped_gemm_path_equals_loop_with_gradients():
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    torch.manual_seed(0)
    moe = MoEFFN(dim=32, hidden=16, num_experts=6, top_k=2, dispatch="loop")
    x = torch.randn(50, 32, requires_grad=True)
    y_loop = moe(x)
    g_loop = torch.autograd.grad(y_loop.square().sum(), [x, moe.experts[3].w1.weight])
    moe.dispatch = "grouped"
    y_grp = moe(x)
    g_grp = torch.autograd.grad(y_grp.square().sum(), [x, moe.experts[3].w1.weight])
    torch.testing.assert_close(y_grp, y_loop, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_grp, g_loop, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_balancing_bias_brings_biased_router_toward_uniform():
    torch.manual_seed(0)
    e, k = 8, 2
    moe = MoEFFN(dim=16, hidden=8, num_experts=e, top_k=k)
    with torch.no_grad():  # router strongly prefers experts 0 and 1 for every token
        moe.router.gate.weight.zero_()
        moe.router.gate.weight[:2] = 0.0
        moe.router.gate.weight[:, :] += torch.randn(e, 16) * 0.05
        moe.router.gate.weight[:2, 0] += 3.0
    x = torch.randn(256, 16)
    x[:, 0] = x[:, 0].abs() + 1.0

    def imbalance() -> float:
        moe(x)
        load = moe.last_load / moe.last_load.sum()
        return float(load.max() * e)  # 1.0 = perfectly uniform

    start = imbalance()
    assert start > 3.0
    moe.train()
    for _ in range(150):  # rate 0.02 -> the bias can move 3.0 in 150 steps
        with torch.no_grad():
            moe(x)
        moe.update_bias(0.02)
        assert float(moe.pending_load.sum()) == 0
    assert imbalance() < 1.6  # sign updates oscillate around uniform; 8 experts x 256 tokens
    assert abs(float(moe.expert_bias.sum())) < 1e-4  # centred update


def test_aux_loss_is_minimal_for_uniform_routing():
    torch.manual_seed(0)
    moe = MoEFFN(dim=8, hidden=8, num_experts=4, top_k=1).train()
    with torch.no_grad():
        moe.router.gate.weight.zero_()  # equal scores -> aux = E * sum f_e * 1/E = 1 whatever f
    moe(torch.randn(64, 8))
    assert moe.aux_loss is not None and abs(moe.aux_loss.item() - 1.0) < 1e-6
    with torch.no_grad():
        moe.router.gate.weight[0, 0] = 10.0
    x = torch.randn(64, 8)
    x[:, 0] = x[:, 0].abs() + 1
    moe(x)
    assert moe.aux_loss.item() > 1.5  # everything on expert 0


def test_gate_multiply_is_float32_under_bf16_autocast():
    """As the release: the experts run in bf16 under autocast, their outputs are weighted by the float32 gates in
    float32 (a bf16 gate keeps 8 bits). Reference: each expert's own bf16 outputs (captured), weighted per token."""
    torch.manual_seed(0)
    moe = MoEFFN(16, 24, 5, 2, dispatch="loop")
    x = torch.randn(40, 16)
    outputs: dict[int, torch.Tensor] = {}
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda _m, _i, y, e=e: outputs.__setitem__(e, y.detach()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moe(x)
        idx, gate, _ = moe.route(x)
    assert outputs[0].dtype == torch.bfloat16 and gate.dtype == torch.float32
    ref, ref_bf16 = torch.zeros(40, 16), torch.zeros(40, 16)
    for e, y in outputs.items():
        tokens = [t for t in range(40) if e in idx[t].tolist()]  # an expert's tokens, in token order (stable sort)
        for row, t in enumerate(tokens):
            g = gate[t, idx[t].tolist().index(e)]
            ref[t] += y[row].float() * g
            ref_bf16[t] += (y[row] * g.to(torch.bfloat16)).float()
    # two slots per token: a float32 sum of two terms does not depend on their order, so the match is exact
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert not torch.equal(out, ref_bf16)  # the bf16 gate multiply would round
