"""Mixture-of-Experts FFN: token-choice top-k routing with sigmoid scores and auxiliary-loss-free balancing.

As in the released SigLino student (arXiv 2512.20157, tiiuae/amoe): routed SwiGLU experts, no shared expert,
sigmoid router scores, gate = the selected experts' unbiased scores (optionally renormalised over the top-k,
`route_norm`, released models: off) times `route_scale` (released: 1.0), applied to the expert outputs; a per-expert
bias that is added to the scores only when *choosing* experts (DeepSeek-V3's
auxiliary-loss-free balancing, torchtitan's sign update): after each optimiser step the training loop calls
`update_bias(rate)`, which nudges the bias of under-loaded experts up and over-loaded ones down. A Switch-style
auxiliary balance loss is computed in every training forward (`aux_loss`, a few [T, E] operations); it enters the
objective only when `loss.balance_aux_weight` > 0, the one switch for it (ablations).

Dispatch: the (token, expert) slots are sorted by expert, the tokens gathered once (`index_select`), split per
expert with `torch.split`, each expert applied to its contiguous chunk, and the weighted outputs scattered back with
`index_add`. Each expert owns its own parameters: slicing one stacked [E, d, h] parameter makes every slice's
backward materialise a full-size gradient (6.5x slower than dense on CPU, FACTS.md); one parameter per expert is
1.4x. The released checkpoints stack them (`experts.w1 [E, h, d]` ...); amoe_core.models.release.siglino maps the names. On CUDA the experts can instead run as one grouped GEMM (`torch._grouped_mm`, `dispatch="grouped"`), which is
the fast-path hook: it takes the same sorted tokens and per-expert counts.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Dispatch = Literal["auto", "loop", "grouped"]


class FeedForward(nn.Module):
    """SwiGLU MLP w2(silu(w1 x) * w3 x), bias-free: a dense layer, or one expert."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def init_weights(self, std: float) -> None:
        """The release's init: gate std 0.02, up `std` (depth-scaled), down zero (each block starts as identity)."""
        nn.init.trunc_normal_(self.w1.weight, std=0.02)
        nn.init.trunc_normal_(self.w3.weight, std=std)
        nn.init.zeros_(self.w2.weight)


class MoEFFN(nn.Module):
    """Routed SwiGLU experts. `forward(x [..., d]) -> [..., d]`; router statistics are kept in buffers.

    Buffers read by the training loop after a forward: `last_load [E]` (token slots routed to each expert in the last
    forward), `pending_load [E]` (accumulated since the last `update_bias`), `expert_bias [E]` (selection bias).
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int,
        top_k: int,
        route_norm: bool = False,
        route_scale: float = 1.0,
        dispatch: Dispatch = "auto",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.dim, self.hidden, self.num_experts, self.top_k = dim, hidden, num_experts, top_k
        self.route_norm, self.route_scale, self.dispatch = route_norm, route_scale, dispatch
        self.router = Router(dim, num_experts)
        self.experts = nn.ModuleList(FeedForward(dim, hidden) for _ in range(num_experts))
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        self.register_buffer("pending_load", torch.zeros(num_experts))
        self.register_buffer("last_load", torch.zeros(num_experts), persistent=False)
        self.aux_loss: Tensor | None = None

    # ------------------------------------------------------------------------------------------------ routing
    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [T, d] -> (expert index [T, k], gate weight [T, k], sigmoid scores [T, E])."""
        scores = torch.sigmoid(self.router.gate(x).float())
        # The bias steers selection only; the gate weights come from the unbiased scores (DeepSeek-V3).
        _, idx = torch.topk(scores + self.expert_bias, self.top_k, dim=-1)
        gate = scores.gather(1, idx)
        if self.route_norm:
            gate = gate / (gate.sum(-1, keepdim=True) + 1e-20)
        return idx, gate * self.route_scale, scores

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.dim)
        idx, gate, scores = self.route(flat)
        slot_expert = idx.reshape(-1)  # [T*k]
        counts = torch.bincount(slot_expert, minlength=self.num_experts)
        with torch.no_grad():
            self.last_load.copy_(counts)
            if self.training:
                self.pending_load.add_(counts)
        self.aux_loss = self._aux_loss(scores, counts) if self.training else None

        order = torch.argsort(slot_expert, stable=True)
        token_of_slot = order // self.top_k
        xs = flat.index_select(0, token_of_slot)
        ys = self._experts_forward(xs, counts)
        ys = ys * gate.reshape(-1)[order].unsqueeze(-1).to(ys.dtype)
        out = flat.new_zeros(flat.shape).index_add(0, token_of_slot, ys.to(flat.dtype))
        return out.reshape(shape)

    def _experts_forward(self, xs: Tensor, counts: Tensor) -> Tensor:
        """xs: tokens sorted by expert [T*k, d]; counts [E]. The GPU grouped-GEMM fast path plugs in here."""
        mode = self.dispatch
        if mode == "auto":
            mode = "grouped" if xs.is_cuda and hasattr(torch, "_grouped_mm") else "loop"
        if mode == "grouped":
            return self._experts_grouped(xs, counts)
        out = []
        for expert, chunk in zip(self.experts, torch.split(xs, counts.tolist()), strict=True):
            out.append(expert(chunk) if chunk.shape[0] else chunk)
        return torch.cat(out)

    def _experts_grouped(self, xs: Tensor, counts: Tensor) -> Tensor:
        """All experts as grouped GEMMs over the expert-sorted tokens (same math as the loop)."""
        offs = torch.cumsum(counts, 0).to(torch.int32)
        w_g = torch.stack([e.w1.weight.t() for e in self.experts]).to(xs.dtype)  # [E, d, h]
        w_x = torch.stack([e.w3.weight.t() for e in self.experts]).to(xs.dtype)
        w_o = torch.stack([e.w2.weight.t() for e in self.experts]).to(xs.dtype)  # [E, h, d]
        h = F.silu(torch._grouped_mm(xs, w_g, offs=offs)) * torch._grouped_mm(xs, w_x, offs=offs)
        return torch._grouped_mm(h, w_o, offs=offs)

    def _aux_loss(self, scores: Tensor, counts: Tensor) -> Tensor:
        """Switch-style balance loss E * sum_e f_e * P_e (f: fraction of slots, P: mean normalised score)."""
        f = counts.float() / counts.sum().clamp_min(1)
        p = (scores / scores.sum(-1, keepdim=True).clamp_min(1e-9)).mean(0)
        return self.num_experts * (f.detach() * p).sum()

    def init_weights(self, std: float) -> None:
        nn.init.trunc_normal_(self.router.gate.weight, std=std)
        for expert in self.experts:
            expert.init_weights(std)

    # ------------------------------------------------------------------------------------------------ balancing
    @torch.no_grad()
    def update_bias(self, rate: float, group: torch.distributed.ProcessGroup | None = None) -> None:
        """Aux-loss-free balancing step (torchtitan): bias += rate * sign(mean load - load), centred; resets counts.

        Under torch.distributed the loads are summed over ranks first, so every rank applies the same update.
        """
        load = self.pending_load
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load, group=group)
        if load.sum() > 0 and rate > 0:
            delta = rate * torch.sign(load.mean() - load)
            self.expert_bias.add_(delta - delta.mean())
        load.zero_()


class Router(nn.Module):
    """The routing projection, kept in its own module so parameter names match the release (`router.gate`)."""

    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, num_experts, bias=False)
