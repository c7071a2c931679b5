"""Resolution policy for token-balanced batching (AMoE / SigLino, arXiv 2512.20157).

Every image keeps its aspect ratio and is resized to a patch grid (rows, cols) with rows * cols in
[min_tokens, max_tokens]. During training the per-image token budget is drawn from `token_sampling`:
- native: the image's own patch count (stored size / patch), clamped to the range;
- uniform / loguniform: a budget drawn over [min_tokens, max_tokens], so the student sees every resolution
  (the paper mixes low resolutions in to avoid forgetting them).
The draw is a pure function of (seed, epoch, key): any rank, worker or resumed run reproduces it without
communication, and the whole epoch can be planned from the manifest alone before one image is decoded.
The grid for a budget comes from timm's NaFlex `get_image_size_for_seq`; patches from timm's `patchify_image`
(the SigLIP2 NaFlex layout).
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from timm.data.naflex_transforms import get_image_size_for_seq, patchify_image
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from amoe_core.config.packing import PackingConfig


def uniform01(seed: int, epoch: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, epoch, key): a stable hash, not Python's salted `hash`."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def native_tokens(height: int, width: int, patch_size: int) -> int:
    return max(1, round(height / patch_size)) * max(1, round(width / patch_size))


def token_budget(cfg: PackingConfig, key: str, height: int, width: int, seed: int, epoch: int) -> int:
    """Patch-token budget of one image for this epoch, in [min_tokens, max_tokens]."""
    lo, hi = cfg.min_tokens, cfg.max_tokens
    if cfg.token_sampling == "native":
        return min(hi, max(lo, native_tokens(height, width, cfg.patch_size)))
    u = uniform01(seed, epoch, key)
    if cfg.token_sampling == "uniform":
        return lo + min(hi - lo, int(u * (hi - lo + 1)))
    # log-uniform over the integers lo..hi: equal mass per octave of resolution
    return min(hi, max(lo, int(math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo))))))


@lru_cache(maxsize=65536)
def grid_for(height: int, width: int, budget: int, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """(rows, cols) in patches: aspect kept as well as integers allow, rows * cols <= budget, >= min_tokens."""
    # Work on a copy pre-scaled to ~budget patches of size 1 so timm's ratio search stays inside its (0, 100) range.
    scale = math.sqrt(budget / (height * width))
    _, best = get_image_size_for_seq((height * scale, width * scale), patch_size=1, max_seq_len=budget)
    aspect = math.log(height / width)
    rows, cols = _keep_aspect((int(best[0]), int(best[1])), height, width, budget, aspect)
    while rows * cols < min_tokens:  # rare: odd aspect ratios at tiny budgets; grow the side that keeps aspect best
        options = [(r, c) for r, c in ((rows + 1, cols), (rows, cols + 1)) if r * c <= max_tokens]
        if not options:
            break
        rows, cols = min(options, key=lambda rc: abs(math.log(rc[0] / rc[1]) - aspect))
    if rows * cols < min_tokens:  # only a 1-wide strip fits the range
        rows, cols = (min_tokens, 1) if height >= width else (1, min_tokens)
    return int(rows), int(cols)


def _keep_aspect(timm_pick: tuple[int, int], height: int, width: int, budget: int, aspect: float) -> tuple[int, int]:
    """The grid closest to the image's aspect among full ones (one more row and column would not fit).

    Candidates: timm's pick and the roundings of either ideal side. timm maximises tokens under the budget and may
    trade aspect for them (133 x 1795 px at 270 tokens -> 5 x 54, 2.4:1 off; 4 x 54 is exact and full).
    """
    r_star, c_star = math.sqrt(budget * height / width), math.sqrt(budget * width / height)
    cands = {timm_pick}
    for r in {math.floor(r_star), math.ceil(r_star)}:
        if 1 <= r <= budget:
            cands.add((r, max(1, min(budget // r, round(r * width / height)))))
    for c in {math.floor(c_star), math.ceil(c_star)}:
        if 1 <= c <= budget:
            cands.add((max(1, min(budget // c, round(c * height / width))), c))

    def err(rc: tuple[int, int]) -> float:
        return abs(math.log(rc[0] / rc[1]) - aspect)

    full = [rc for rc in cands if (rc[0] + 1) * (rc[1] + 1) > budget]
    return min(full or cands, key=lambda rc: (round(err(rc), 9), -rc[0] * rc[1]))


def plan_grids(
    cfg: PackingConfig, keys: list[str], heights: np.ndarray, widths: np.ndarray, seed: int, epoch: int
) -> np.ndarray:
    """[n, 2] (rows, cols) of every image for this epoch, from stored sizes only (no decoding)."""
    out = np.empty((len(keys), 2), dtype=np.int64)
    for i, (key, h, w) in enumerate(zip(keys, heights.tolist(), widths.tolist())):
        budget = token_budget(cfg, key, h, w, seed, epoch)
        out[i] = grid_for(int(h), int(w), budget, cfg.min_tokens, cfg.max_tokens)
    return out


def resize_to_grid(img: Image.Image, rows: int, cols: int, patch_size: int) -> Tensor:
    """RGB image resized (aspect kept by the grid choice) to [3, rows*P, cols*P] float in [0, 1]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    size = (cols * patch_size, rows * patch_size)  # PIL takes (width, height)
    if img.size != size:
        # PIL's reducing resize is antialiased, and unlike tensor bicubic it never leaves [0, 1]
        img = img.resize(size, Image.Resampling.BICUBIC)
    return pil_to_tensor(img).float().div_(255.0)


def patchify(image: Tensor, patch_size: int) -> tuple[Tensor, Tensor]:
    """[3, H, W] -> patches [n, P*P*3] (timm / SigLIP2 NaFlex layout) and (row, col) coords [n, 2] long."""
    patches, coords, _ = patchify_image(image, (patch_size, patch_size), pad=False, include_info=True)
    return patches, coords.to(torch.long)
