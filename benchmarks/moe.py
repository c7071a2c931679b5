"""MoE FFN vs a dense SwiGLU FFN with the same active parameters: forward + backward, same run, CPU or GPU.

Setting of the AMoE-0.15B student (arXiv 2512.20157): 4096 tokens, width 768, 28 experts of hidden 384, top-2, so
the dense baseline is a SwiGLU of hidden 2 * 384 = 768. Target: MoE time <= 1.6x dense. Prints the ratio last.
"""

from __future__ import annotations

import argparse
import time

import torch
from _smoke import SMOKE_HELP
from timm.layers import SwiGLU

from amoe_core.device import pick_device
from amoe_core.models.moe import MoEFFN


def step_time(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward + backward."""
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    module(x).square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    module.zero_grad(set_to_none=False)  # keep gradient buffers: measure compute, not allocation
    return time.perf_counter() - t0


def median_times(modules: list[torch.nn.Module], x: torch.Tensor, iters: int, warmup: int) -> list[float]:
    """Median time per module, measured interleaved so that background load hits both alike."""
    times: list[list[float]] = [[] for _ in modules]
    for i in range(warmup + iters):
        for m, ts in zip(modules, times, strict=True):
            t = step_time(m, x)
            if i >= warmup:
                ts.append(t)
    return [sorted(ts)[len(ts) // 2] for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--experts", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--device", default=str(pick_device()))
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.dim, args.experts, args.hidden, args.iters, args.warmup = 256, 64, 6, 32, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    moe = MoEFFN(args.dim, args.hidden, args.experts, args.top_k).to(dev)
    dense = SwiGLU(args.dim, args.hidden * args.top_k, args.dim, bias=False).to(dev)
    x = torch.randn(args.tokens, args.dim, device=dev, requires_grad=True)
    t_moe, t_dense = median_times([moe, dense], x, args.iters, args.warmup)
    active = sum(p.numel() for p in moe.router.parameters()) + args.top_k * 3 * args.dim * args.hidden
    print(f"device {dev}, {torch.get_num_threads()} threads, {args.tokens} tokens, d {args.dim}")
    print(f"dense SwiGLU hidden {args.hidden * args.top_k}: {t_dense * 1e3:.1f} ms fwd+bwd")
    print(
        f"MoE {args.experts} experts x {args.hidden}, top-{args.top_k} ({active / 1e6:.2f}M active): {t_moe * 1e3:.1f} ms"
    )
    print(f"moe/dense time ratio: {t_moe / t_dense:.2f} (target <= 1.6)")


if __name__ == "__main__":
    main()
