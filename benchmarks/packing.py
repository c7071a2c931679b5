"""Token-balanced batching (issue 4): utilisation, training throughput and per-rank balance, ours vs baselines.

Size distributions: (a) the real demo pool (data/shards/manifest.parquet, else the images under data/demo/pool cut into
shards of `ingest.shard_size` in ingest's sorted order), streamed in the loader's own order (shards permuted per epoch,
written order within a shard); (b) synthetic log-uniform 64-1024 px sides with random aspect ratios, in random order.
Each is measured under two resolution policies: params.yaml's `packing.token_sampling` (the training default) and
`native` (each image's own size clamped to [min_tokens, max_tokens]), both through `resolution.plan_grids`.
Reports, in one run:
- token utilisation (real tokens / computed tokens) over a whole epoch on 8 ranks: our packer; plain first-fit
  decreasing over the same shuffle buffer; timm's NaFlex bucketing (seq-len buckets, each image resized by timm's
  `get_image_size_for_seq` to the drawn bucket and padded to it, batch size from timm's
  `calculate_naflex_batch_size`, same token budget per step); every image padded to the largest size;
- throughput (forward + backward of a small ViT of timm blocks with `packed_attention`, real tokens/s): packed steps
  vs one image per row with rows padded to the step's longest image, as many rows as fit the same computed-token
  budget per step (seqs_per_step x c_max); the same images in the same order, timed step by step alternately;
- per-rank token imbalance (max/min tokens over 8 simulated ranks, worst step): ours vs a fixed number of images.
The last line is the utilisation ratio ours / NaFlex bucketing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from _smoke import SMOKE_HELP
from PIL import Image
from timm.data.naflex_dataset import calculate_naflex_batch_size
from timm.data.naflex_transforms import get_image_size_for_seq
from timm.layers import Mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amoe_core.config import Params, load_params  # noqa: E402
from amoe_core.data.loader import matched_images_per_step, stream_order  # noqa: E402
from amoe_core.data.packing import balance_batches, ffd_pack, split_for, stream_pack, utilisation  # noqa: E402
from amoe_core.data.resolution import plan_grids  # noqa: E402
from amoe_core.device import pick_device  # noqa: E402
from amoe_core.models.packed_attention import packed_attention  # noqa: E402

RANKS = 8
TIMED_STEPS = 4


def demo_pool_rows(params: Params) -> tuple[pd.DataFrame, str]:
    """(key, shard, height, width) of the demo pool in the loader's stream order for epoch 0, and where from."""
    manifest = Path(params.ingest.out) / "manifest.parquet"
    if manifest.exists():
        df = pd.read_parquet(manifest, columns=["key", "shard", "height", "width"])
        return stream_order(df, params.seed, 0, params.packing.shard_interleave), f"{manifest} ({len(df)} images)"
    pool = Path("data/demo/pool")
    files = sorted(p for p in pool.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if pool.exists() else []
    if not files:
        return pd.DataFrame(), f"neither {manifest} nor images under {pool} exist: run `amoe data demo-pool` first"
    Image.MAX_IMAGE_PIXELS = None  # only headers are read (no decoding): huge clip-art sizes are fine here
    hw = []
    for p in files:
        with Image.open(p) as im:
            hw.append((im.height, im.width))
    hw = np.array(hw)
    scale = np.minimum(1.0, params.ingest.max_side / hw.max(1))  # as ingest stores them (longest side capped)
    hw = np.maximum(1, (hw * scale[:, None]).round().astype(int))
    df = pd.DataFrame({"key": [str(p) for p in files], "height": hw[:, 0], "width": hw[:, 1]})
    df["shard"] = np.arange(len(df)) // params.ingest.shard_size  # ingest writes items sorted by (source, path)
    where = f"{manifest} is missing: image sizes of {pool} ({len(files)} images) in ingest's shard order"
    return stream_order(df, params.seed, 0, params.packing.shard_interleave), where


def synthetic_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    side = np.exp(rng.uniform(np.log(64), np.log(1024), n))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
    hw = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], 1).round().astype(int)
    return pd.DataFrame({"key": [f"syn{i:06d}" for i in range(n)], "height": hw[:, 0], "width": hw[:, 1]})


def tokens_of(rows: pd.DataFrame, params: Params, sampling: str) -> np.ndarray:
    cfg = params.packing.model_copy(update={"token_sampling": sampling})
    grids = plan_grids(cfg, rows["key"].tolist(), rows["height"].to_numpy(), rows["width"].to_numpy(), params.seed, 0)
    return grids[:, 0] * grids[:, 1]


def ours(tokens: np.ndarray, cfg) -> list:
    seqs = stream_pack(tokens, cfg.c_max, cfg.max_images_per_seq, cfg.shuffle_buffer)
    return balance_batches(seqs, cfg.seqs_per_step, RANKS)


def ffd_over_buffer(tokens: np.ndarray, cfg, rng: np.random.Generator) -> list:
    """Reference: FFD over a pool of `shuffle_buffer` images, the fullest half of its sequences leaves, rest waits."""
    seqs: list[list[int]] = []
    pool: list[int] = []
    nxt, S = 0, cfg.seqs_per_step
    while nxt < len(tokens) or pool:
        take = max(0, cfg.shuffle_buffer - len(pool))
        pool, nxt = pool + list(range(nxt, min(len(tokens), nxt + take))), min(len(tokens), nxt + take)
        arr = np.asarray(pool)
        bins = ffd_pack(tokens[arr], cfg.c_max, cfg.max_images_per_seq, order=rng.permutation(len(arr)))
        bins = [bins[j] for j in np.argsort([-tokens[arr[b]].sum() for b in bins], kind="stable")]
        n_emit = len(bins) if nxt >= len(tokens) else max(S, len(bins) // 2 // S * S)
        seqs += [[int(arr[i]) for i in b] for b in bins[:n_emit]]
        pool = [int(arr[i]) for b in bins[n_emit:] for i in b]
    return balance_batches(seqs, S, RANKS)


def util_naflex(rows: pd.DataFrame, cfg, rng: np.random.Generator) -> float:
    """timm NaFlex: per batch a seq len from the buckets (timm's defaults scaled to max_tokens), images resized to fit."""
    buckets = sorted({max(cfg.min_tokens, round(cfg.max_tokens * s / 1024)) for s in (128, 256, 576, 784, 1024)})
    budget = cfg.seqs_per_step * cfg.c_max
    sizes = rows[["height", "width"]].to_numpy()
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


def padded_steps(tokens: list[int], budget: int) -> list[list[int]]:
    """One image per row, rows padded to the step's longest image, as many rows as fit `budget` computed tokens."""
    steps, cur = [], []
    for t in tokens:
        if cur and (len(cur) + 1) * max(max(cur), t) > budget:
            steps.append(cur)
            cur = []
        cur.append(t)
    return steps + ([cur] if cur else [])


def fixed_images_per_step(tokens: np.ndarray, cfg) -> int:
    """The fixed baseline's images per step: the param, or (null) as many as carry a packed step's tokens, as the
    loader's fixed mode does."""
    return cfg.images_per_step or matched_images_per_step(cfg, np.stack([tokens, np.ones_like(tokens)], 1))


def imbalance(tokens: np.ndarray, plan: list, cfg) -> tuple[float, float, float]:
    """Max/min tokens over RANKS ranks: ours computed (worst step), ours real and fixed images/rank (median step)."""
    shares = [split_for(plan, r, RANKS, 0, 1) for r in range(RANKS)]
    computed = np.array([[len(b) * cfg.c_max for b in sh] for sh in shares])  # [ranks, steps]
    real = np.array([[sum(int(tokens[i]) for s in b for i in s) for b in sh] for sh in shares])
    per_rank = fixed_images_per_step(tokens, cfg)
    n = len(tokens) - len(tokens) % (per_rank * RANKS)
    fixed = tokens[:n].reshape(-1, RANKS, per_rank).sum(-1)  # [steps, ranks]
    ratio = lambda a: a.max(0) / np.maximum(a.min(0), 1)  # noqa: E731 - a: [ranks, steps]
    return float(ratio(computed).max()), float(np.median(ratio(real))), float(np.median(ratio(fixed.T)))


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


def train_step(model, opt, inp, device: str) -> float:
    """Seconds of one forward + backward + SGD step."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(*inp)
    (out * (inp[2] >= 0).unsqueeze(-1)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def throughput(tokens: np.ndarray, plan: list, cfg, device: str, n_steps: int) -> tuple[float, float, float]:
    """(packed, padded real tokens/s, padded utilisation) on the images of the first `n_steps` packed steps."""
    torch.manual_seed(0)
    pdim, budget = 3 * cfg.patch_size**2, cfg.seqs_per_step * cfg.c_max
    steps = plan[:n_steps]
    packed = [step_inputs([[int(tokens[i]) for i in s] for s in b], cfg.c_max, pdim, device) for b in steps]
    flat = sorted(i for b in steps for s in b for i in s)  # the same images, in stream order
    rows = padded_steps([int(tokens[i]) for i in flat], budget)
    padded = [step_inputs([[t] for t in r], max(r), pdim, device) for r in rows]
    model = SmallViT(pdim).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    train_step(model, opt, packed[0], device), train_step(model, opt, padded[0], device)  # warm-up
    t_packed = t_padded = 0.0
    for j in range(max(len(packed), len(padded))):  # alternate, so load changes on a shared machine hit both
        if j < len(packed):
            t_packed += train_step(model, opt, packed[j], device)
        if j < len(padded):
            t_padded += train_step(model, opt, padded[j], device)
    real = int(tokens[flat].sum())
    u_pad = real / sum(len(r) * max(r) for r in rows)
    return real / t_packed, real / t_padded, u_pad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=int, default=20000, help="images in the synthetic distribution")
    ap.add_argument("--timed-steps", type=int, default=TIMED_STEPS, help="packed steps timed for throughput")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; the demo pool is not read")
    args = ap.parse_args()
    if args.smoke:
        args.synthetic, args.timed_steps = 1500, 1
    params = load_params() if Path("params.yaml").exists() else Params()
    cfg = params.packing
    device = pick_device().type  # the helpers below take the type string
    print(
        f"packing: c_max={cfg.c_max} S={cfg.seqs_per_step} tokens [{cfg.min_tokens}, {cfg.max_tokens}] "
        f"<= {cfg.max_images_per_seq} images/seq, buffer {cfg.shuffle_buffer}, patch {cfg.patch_size}; {RANKS} ranks"
    )
    demo, where = (pd.DataFrame(), "not read (--smoke)") if args.smoke else demo_pool_rows(params)
    print(f"(a) demo pool: {where}")
    dists = {"(a) demo pool": demo} if len(demo) else {}
    dists["(b) synthetic log-uniform 64-1024 px"] = synthetic_rows(args.synthetic, np.random.default_rng(0))
    ratios = []
    for name, rows in dists.items():
        u_nf = util_naflex(rows, cfg, np.random.default_rng(1))
        for sampling in dict.fromkeys([cfg.token_sampling, "native"]):
            tokens = tokens_of(rows, params, sampling)
            t0 = time.perf_counter()
            plan = ours(tokens, cfg)
            t_plan = time.perf_counter() - t0
            u_ours = utilisation(plan, tokens, cfg.c_max)
            u_ffd = utilisation(ffd_over_buffer(tokens, cfg, np.random.default_rng(0)), tokens, cfg.c_max)
            u_pad = float(tokens.mean() / cfg.max_tokens)
            last = len(plan[-1])
            print(f"{name}, token_sampling={sampling}: {len(tokens)} images, mean {tokens.mean():.1f} tokens/image")
            print(
                f"  utilisation  ours {u_ours:.4f} | FFD over the buffer {u_ffd:.4f} | timm NaFlex buckets {u_nf:.4f} "
                f"| pad to largest {u_pad:.4f}   ({len(plan)} steps planned in {t_plan:.2f} s; last round "
                f"{last} of {cfg.seqs_per_step} rows)"
            )
            c_comp, c_real, c_fixed = imbalance(tokens, plan, cfg)
            print(
                f"  rank imbalance max/min tokens  ours computed {c_comp:.3f} (worst step), ours real {c_real:.3f} | "
                f"{fixed_images_per_step(tokens, cfg)} images/rank {c_fixed:.3f} (median step)"
            )
            tp_packed, tp_padded, u_rows = throughput(tokens, plan, cfg, device, args.timed_steps)
            print(
                f"  throughput ({device}, fwd+bwd small ViT, {cfg.seqs_per_step * cfg.c_max} computed tokens/step) "
                f"packed {tp_packed:.0f} real tokens/s vs one image per row padded {tp_padded:.0f} "
                f"(its utilisation {u_rows:.3f}): {tp_packed / tp_padded:.2f}x"
            )
            ratios.append((f"{name} [{sampling}]", u_ours / u_nf))
    print("utilisation ratio ours / timm NaFlex bucketing: " + ", ".join(f"{n} {r:.3f}x" for n, r in ratios))


if __name__ == "__main__":
    main()
