"""Token-balanced batching (issue 4): utilisation, training throughput and per-rank balance, ours vs baselines.

Size distributions: (a) the real demo pool (data/shards/manifest.parquet, else the images under data/demo/pool),
(b) synthetic log-uniform 64-1024 px sides with random aspect ratios. Every image gets its token count from the
training resolution policy (params.yaml `packing`, native sizes clamped to [min_tokens, max_tokens]).
Reports, in one run:
- token utilisation (real tokens / computed tokens): our packer; timm's NaFlex bucketing (seq-len buckets, each image
  resized by timm's `get_image_size_for_seq` to the drawn bucket and padded to it, batch size from timm's
  `calculate_naflex_batch_size`, same token budget per step); every image padded to the largest size;
- throughput (forward + backward of a small ViT of timm blocks with `packed_attention`, real tokens/s): packed
  steps vs one-image-per-row steps padded to the largest image, same computed tokens per step;
- per-rank token imbalance (max/min tokens over 8 simulated ranks, median over steps): ours vs a fixed number of images.
The last line is the utilisation ratio ours / NaFlex bucketing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.data.naflex_dataset import calculate_naflex_batch_size
from timm.data.naflex_transforms import get_image_size_for_seq
from timm.layers import Mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amoe_core.config import PackingConfig, load_params  # noqa: E402
from amoe_core.data.packing import balance_batches, ffd_pack, fixed_batches, split_for, stream_pack  # noqa: E402
from amoe_core.data.resolution import grid_for, native_tokens  # noqa: E402
from amoe_core.models.packed_attention import packed_attention  # noqa: E402

RANKS = 8


def demo_pool_sizes() -> tuple[np.ndarray, str]:
    manifest = Path("data/shards/manifest.parquet")
    if manifest.exists():
        import pandas as pd

        df = pd.read_parquet(manifest, columns=["height", "width"])
        return np.random.default_rng(0).permutation(
            df[["height", "width"]].to_numpy()
        ), f"{manifest} ({len(df)} images)"
    pool = Path("data/demo/pool")
    files = [p for p in pool.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")] if pool.exists() else []
    if files:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # only headers are read (no decoding): huge clip-art sizes are fine here
        sizes = []
        for p in files:
            with Image.open(p) as im:
                sizes.append((im.height, im.width))
        # in a random order, as the loader's shuffled shards and buffer would stream them (the folder walk is sorted)
        sizes = np.random.default_rng(0).permutation(np.array(sizes))
        return sizes, f"{manifest} is missing: image sizes of {pool} ({len(files)} images)"
    return np.zeros((0, 2)), f"neither {manifest} nor images under {pool} exist: run `amoe data demo-pool` first"


def synthetic_sizes(n: int, rng: np.random.Generator) -> np.ndarray:
    side = np.exp(rng.uniform(np.log(64), np.log(1024), n))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
    return np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], 1).round().astype(int)


def tokens_of(sizes: np.ndarray, cfg: PackingConfig) -> np.ndarray:
    out = []
    for h, w in sizes.tolist():
        budget = min(cfg.max_tokens, max(cfg.min_tokens, native_tokens(h, w, cfg.patch_size)))
        r, c = grid_for(int(h), int(w), budget, cfg.min_tokens, cfg.max_tokens)
        out.append(r * c)
    return np.array(out)


def ours(tokens: np.ndarray, cfg: PackingConfig, pack=None) -> list:
    kw = {} if pack is None else {"pack": pack}
    plan = stream_pack(
        tokens, cfg.c_max, cfg.max_images_per_seq, cfg.seqs_per_step, cfg.shuffle_buffer, np.random.default_rng(0), **kw
    )
    return balance_batches(plan, RANKS)


def util_packed(plan: list, tokens: np.ndarray, cfg: PackingConfig) -> float:
    real = sum(int(tokens[i]) for b in plan for s in b for i in s)
    return real / (len(plan) * cfg.seqs_per_step * cfg.c_max)


def util_naflex(sizes: np.ndarray, cfg: PackingConfig, rng: np.random.Generator) -> float:
    """timm NaFlex: per batch a seq len from the buckets (timm's defaults scaled to max_tokens), images resized to fit."""
    buckets = sorted({max(cfg.min_tokens, round(cfg.max_tokens * s / 1024)) for s in (128, 256, 576, 784, 1024)})
    budget = cfg.seqs_per_step * cfg.c_max
    real = computed = i = 0
    while i < len(sizes):
        seq_len = int(rng.choice(buckets))
        bs = calculate_naflex_batch_size(budget, seq_len)
        for h, w in sizes[i : i + bs].tolist():
            _, (th, tw) = get_image_size_for_seq((h, w), cfg.patch_size, seq_len)
            real += (th // cfg.patch_size) * (tw // cfg.patch_size)
        computed += bs * seq_len
        i += bs
    return real / computed


def imbalance(tokens: np.ndarray, cfg: PackingConfig) -> tuple[float, float, float]:
    """(ours computed, ours real, fixed images) worst-step max/min tokens over RANKS ranks."""
    plan = ours(tokens, cfg)
    shares = [split_for(plan, r, RANKS, 0, 1) for r in range(RANKS)]
    real = np.array([[sum(int(tokens[i]) for s in b for i in s) for b in sh] for sh in shares])  # [ranks, steps]
    computed = np.full_like(real, cfg.seqs_per_step * cfg.c_max)
    per_rank = max(1, len(tokens) // (RANKS * 20))  # 20 steps of a fixed number of images per rank
    fixed = fixed_batches(len(tokens) - len(tokens) % (per_rank * RANKS), per_rank)
    ft = np.array([sum(int(tokens[s[0]]) for s in b) for b in fixed]).reshape(-1, RANKS).T
    # median over steps: the epoch's last round (end-of-stream flush, balance_batches) is sparse by design
    med = lambda a: float(np.median(a.max(0) / a.min(0)))  # noqa: E731
    return med(computed), med(real), med(ft)


class PackedBlock(nn.Module):
    """A pre-norm ViT block of timm layers whose attention is `packed_attention` (block-diagonal by image)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, image_id: torch.Tensor) -> torch.Tensor:
        S, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(S, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(packed_attention(q, k, v, image_id).transpose(1, 2).reshape(S, N, D))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    def __init__(self, patch_dim: int, dim: int = 192, depth: int = 4, heads: int = 3, grid: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(patch_dim, dim)
        self.row, self.col = nn.Embedding(grid, dim), nn.Embedding(grid, dim)
        self.blocks = nn.ModuleList(PackedBlock(dim, heads) for _ in range(depth))

    def forward(self, patches, coords, image_id):
        x = self.embed(patches) + self.row(coords[..., 0]) + self.col(coords[..., 1])
        for blk in self.blocks:
            x = blk(x, image_id)
        return x


def step_inputs(rows_of_tokens: list[list[int]], L: int, patch_dim: int, device: str):
    """Random patches for rows holding images of the given token counts (ids per image, -1 padding)."""
    S = len(rows_of_tokens)
    image_id = torch.full((S, L), -1, dtype=torch.long)
    coords = torch.zeros((S, L, 2), dtype=torch.long)
    n = 0
    for s, row in enumerate(rows_of_tokens):
        pos = 0
        for t in row:
            image_id[s, pos : pos + t] = n
            coords[s, pos : pos + t, 1] = torch.arange(t) % 32
            coords[s, pos : pos + t, 0] = torch.arange(t) // 32
            n, pos = n + 1, pos + t
    return torch.rand(S, L, patch_dim, device=device), coords.to(device), image_id.to(device)


def throughput(model, steps: list, device: str) -> float:
    """Real tokens per second of forward + backward over the given steps (after one warm-up step)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def run(inp):
        out = model(*inp)
        mask = (inp[2] >= 0).unsqueeze(-1)
        (out * mask).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    run(steps[0])
    if device == "cuda":
        torch.cuda.synchronize()
    t0, real = time.perf_counter(), 0
    for inp in steps:
        run(inp)
        real += int((inp[2] >= 0).sum())
    if device == "cuda":
        torch.cuda.synchronize()
    return real / (time.perf_counter() - t0)


def main() -> None:
    cfg = load_params().packing if Path("params.yaml").exists() else PackingConfig()
    rng = np.random.default_rng(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"packing: c_max={cfg.c_max} S={cfg.seqs_per_step} tokens [{cfg.min_tokens}, {cfg.max_tokens}] "
        f"<= {cfg.max_images_per_seq} images/seq, buffer {cfg.shuffle_buffer}, patch {cfg.patch_size}; {RANKS} ranks"
    )
    demo, where = demo_pool_sizes()
    print(f"(a) demo pool: {where}")
    dists = {"(b) synthetic log-uniform 64-1024 px": synthetic_sizes(20000, rng)}
    if len(demo):
        dists = {"(a) demo pool": demo, **dists}
    ratios = []
    for name, sizes in dists.items():
        tokens = tokens_of(sizes, cfg)
        plan = ours(tokens, cfg)
        u_ours = util_packed(plan, tokens, cfg)
        u_ffd = util_packed(ours(tokens, cfg, pack=ffd_pack), tokens, cfg)
        u_nf = util_naflex(sizes, cfg, np.random.default_rng(1))
        u_pad = float(tokens.mean() / cfg.max_tokens)
        cap = tokens.sum() / (np.ceil(len(tokens) / cfg.max_images_per_seq) * cfg.c_max)
        print(f"{name}: {len(tokens)} images, mean {tokens.mean():.1f} tokens/image")
        print(
            f"  utilisation  ours {u_ours:.4f} | plain FFD over the buffer {u_ffd:.4f} | timm NaFlex buckets "
            f"{u_nf:.4f} | pad to largest {u_pad:.4f} | bound from the image cap {min(1.0, cap):.4f}"
        )
        c_comp, c_real, c_fixed = imbalance(tokens, cfg)
        print(
            f"  rank imbalance (max/min tokens, median over steps)  ours computed {c_comp:.3f}, ours real {c_real:.3f} | "
            f"fixed images/rank {c_fixed:.3f}"
        )
        ratios.append((name, u_ours / u_nf, u_ours / u_pad))
    # throughput on the synthetic mix, same computed tokens per step
    torch.manual_seed(0)
    tokens = tokens_of(dists["(b) synthetic log-uniform 64-1024 px"], cfg)
    plan = ours(tokens, cfg)[:6]
    pdim = 3 * cfg.patch_size**2
    packed = [
        step_inputs(
            [[int(tokens[i]) for i in s] for s in b] + [[]] * (cfg.seqs_per_step - len(b)), cfg.c_max, pdim, device
        )
        for b in plan
    ]
    per_step = cfg.seqs_per_step * cfg.c_max // cfg.max_tokens
    flat = [int(tokens[i]) for b in plan for s in b for i in s]
    padded = [
        step_inputs([[t] for t in flat[j : j + per_step]], cfg.max_tokens, pdim, device)
        for j in range(0, per_step * 6, per_step)
    ]
    model = SmallViT(pdim).to(device)
    tp_packed, tp_padded = throughput(model, packed, device), throughput(model, padded, device)
    print(
        f"throughput ({device}, fwd+bwd small ViT, {cfg.seqs_per_step * cfg.c_max} computed tokens/step): packed "
        f"{tp_packed:.0f} real tokens/s vs one-image-per-row padded {tp_padded:.0f}: {tp_packed / tp_padded:.2f}x"
    )
    for name, _, r_pad in ratios:
        print(f"{name}: utilisation ours / pad-to-largest {r_pad:.2f}x")
    print("utilisation ratio ours / timm NaFlex bucketing: " + ", ".join(f"{n} {r:.3f}x" for n, r, _ in ratios))


if __name__ == "__main__":
    main()
