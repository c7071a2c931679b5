"""Token-balanced packing (AMoE / SigLino, arXiv 2512.20157): whole images into sequences of exactly `c_max` tokens.

The core is pure integer planning over per-image token counts, so it is property-tested without images and every
rank computes the same plan for an epoch from the manifest alone:
- `stream_pack`: sequences built one at a time over a shuffle buffer. Each starts with the pool's largest image (or
  one that has waited too long) and is topped up by `best_fill`, an exact bounded knapsack over the pool's token
  counts that fills the rest of the sequence as full as the pool allows, with an image count close to the pool's
  average (so small images never pile up against the per-sequence image cap). The pool refills after every sequence,
  so every sequence chooses from a full buffer;
- `ffd_pack`: plain first-fit decreasing over one pool (reference for the benchmark and tests);
- `balance_batches`: sequences -> steps; every rank and worker gets the same number of steps and the same number of
  rows in each step, without dropping or repeating an image; the epoch's remainder is one short last round;
- `split_for`: the share of one (rank, worker);
- `assemble`: one planned step of decoded images -> `PackedBatch`.
A plan is `list[step]`, step = `list[sequence]` (its rows; [] = an all-padding row), sequence = `list[item index]`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from amoe_core.data.packed import PackedBatch
from amoe_core.errors import AmoeError

Plan = list[list[list[int]]]


def _check_fits(sizes: np.ndarray, capacity: int) -> None:
    if len(sizes) and sizes.max() > capacity:
        raise AmoeError(f"an image of {int(sizes.max())} tokens cannot fit a sequence of {capacity}; raise c_max")
    if len(sizes) and sizes.min() < 1:
        raise AmoeError(f"an image of {int(sizes.min())} tokens cannot be packed; every image needs >= 1 token")


def ffd_pack(sizes: Sequence[int] | np.ndarray, capacity: int, max_items: int, order: np.ndarray | None = None):
    """First-fit decreasing: bins (lists of indices into `sizes`) of total size <= capacity, <= max_items each.

    `order` breaks ties among equal sizes (a random permutation gives a random mix); by default index order.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    _check_fits(sizes, capacity)
    n = len(sizes)
    tie = np.arange(n) if order is None else np.asarray(order)
    idx = np.lexsort((tie, -sizes))  # decreasing size, then tie order
    free = np.full(n, capacity, dtype=np.int64)  # at most n bins
    count = np.zeros(n, dtype=np.int64)
    bins: list[list[int]] = []
    for i in idx.tolist():
        s = sizes[i]
        fits = np.flatnonzero((free[: len(bins)] >= s) & (count[: len(bins)] < max_items))
        b = int(fits[0]) if len(fits) else len(bins)
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[b] -= s
        count[b] += 1
    return bins


@lru_cache(maxsize=1024)
def _layout(free: int, slots: int) -> tuple[int, int, int]:
    """Bitset layout of the reachable (total, count) pairs of `best_fill`: bit count * W + total.

    W = 2 * free + 2: a total pushed past `free` by one shift stays inside its own count's row, where the valid mask
    clears it, instead of aliasing into the next row. Returns (W, valid mask, one bit per count at total 0).
    """
    width = 2 * free + 2
    column = sum(1 << (c * width) for c in range(slots + 1))
    return width, column * ((1 << (free + 1)) - 1), column


def best_fill(avail: Sequence[tuple[int, int]], free: int, slots: int, target: float) -> list[tuple[int, int]]:
    """Exact top-up: (size, copies) to take from `avail` ((size, count) pairs, increasing sizes), at most `slots` items.

    Maximises the total (<= free); among equally full choices takes the item count nearest `target`, and among
    those prefers large items (small ones are the flexible filler for later sequences). Bounded knapsack with binary
    splitting of each count, over a Python-int bitset of (total, count) pairs: ~100 shifts per sequence.
    """
    width, valid, column = _layout(free, slots)
    reach, items = 1, []  # bit (count 0, total 0); items: (size, copies, reach before)
    for size, count in avail:
        left, chunk = min(count, free // size, slots), 1
        while left > 0:
            take = min(chunk, left)
            items.append((size, take, reach))
            reach = (reach | (reach << (take * (width + size)))) & valid
            left, chunk = left - take, chunk * 2
    total = free
    while not (reach >> total) & column:
        total -= 1
    row = (reach >> total) & column
    counts = [c for c in range(slots + 1) if (row >> (c * width)) & 1]
    pos = min(counts, key=lambda c: (abs(c - target), -c)) * width + total
    out = []
    for size, take, before in reversed(items):  # largest sizes first: take them whenever a solution remains
        prev = pos - take * (width + size)
        if prev >= 0 and (before >> prev) & 1:
            out.append((size, take))
            pos = prev
    return out


def stream_pack(sizes: Sequence[int] | np.ndarray, capacity: int, max_items: int, buffer: int) -> list[list[int]]:
    """Pack a stream of images (token counts in stream order) into sequences, in the order they are made.

    A pool holds up to `buffer` images; each sequence takes the pool's largest image (hard to place later) or, when
    one has waited while 2 x buffer newer images arrived, the oldest (bounds how far an image moves in the stream),
    then `best_fill` tops it up from the pool. Equal sizes are taken oldest first. Every image lands in exactly one
    sequence; no sequence exceeds `capacity` tokens or `max_items` images.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    _check_fits(sizes, capacity)
    sz = sizes.tolist()
    pool: dict[int, deque[int]] = {}  # size -> waiting image indices, oldest first
    pool_n = pool_tokens = nxt = 0
    seqs: list[list[int]] = []
    left_n, left_tokens = len(sz), sum(sz)  # not packed yet: the pool and the rest of the stream
    while nxt < len(sz) or pool_n:
        while nxt < len(sz) and pool_n < buffer:
            pool.setdefault(sz[nxt], deque()).append(nxt)
            pool_n, pool_tokens, nxt = pool_n + 1, pool_tokens + sz[nxt], nxt + 1
        present = sorted(pool)
        oldest = min(present, key=lambda s: pool[s][0])
        first = oldest if pool[oldest][0] < nxt - 2 * buffer else present[-1]
        # Images per full sequence: the epoch's remaining average, pushed twice as far as the pool's own average
        # strays from it: small images piling up in the pool raise the target and drain them before the stream
        # ends (with the pool's average alone they settle at a surplus that ends the epoch as 16 x 4-token rows).
        rest = left_n / left_tokens
        target = min(max_items, max(1.0, capacity * (rest + 2.0 * (pool_n / pool_tokens - rest))))
        seq = [_take(pool, first)]
        avail = [(s, len(pool[s])) for s in present if s in pool]
        for size, copies in best_fill(avail, capacity - first, max_items - 1, target - 1):
            seq.extend(_take(pool, size) for _ in range(copies))
        pool_n -= len(seq)
        pool_tokens -= sum(sz[i] for i in seq)
        left_n, left_tokens = left_n - len(seq), left_tokens - sum(sz[i] for i in seq)
        seqs.append(seq)
    return seqs


def _take(pool: dict[int, deque[int]], size: int) -> int:
    q = pool[size]
    i = q.popleft()
    if not q:
        del pool[size]
    return i


def balance_batches(seqs: list[list[int]], per_step: int, n_parts: int) -> Plan:
    """Group sequences (in order) into steps so that every one of `n_parts` (ranks x workers) gets the same steps.

    Full rounds: n_parts steps of exactly `per_step` rows each. The remaining q < n_parts x per_step sequences form
    one last round of n_parts steps with ceil(q / n_parts) rows each (padded with [] rows), so the epoch's end costs
    at most n_parts - 1 padding rows instead of whole near-empty steps; each rank still computes the same number of
    tokens as every other in every step. Each step of the last round needs an image: if q < n_parts, multi-image
    sequences are split, then rows of the last full round move over (leaving [] padding rows there).
    Returned in order: full rounds, then the last round (see `split_for` for who gets which step).
    """
    seqs = [list(s) for s in seqs if s]
    n_images = sum(len(s) for s in seqs)
    cut = len(seqs) // (per_step * n_parts) * per_step * n_parts
    steps = [seqs[i : i + per_step] for i in range(0, cut, per_step)]
    tail = seqs[cut:]
    if not tail:
        return steps
    if n_images < len(steps) + n_parts:
        raise AmoeError(
            f"{n_images} images cannot give every one of {n_parts} ranks x workers a step; "
            "select more images or use fewer ranks/workers"
        )
    while len(tail) < n_parts:
        multi = max(tail, key=len)
        if len(multi) >= 2:
            tail.append([multi.pop()])
            continue
        donor = next((b for b in reversed(steps) if sum(1 for s in b if s) >= 2), None)
        if donor is not None:
            j = max(i for i, s in enumerate(donor) if s)
            tail.append(donor[j])
            donor[j] = []
        else:  # every full step has one non-empty row: split one of its rows
            row = next(s for b in reversed(steps) for s in b if len(s) >= 2)
            tail.append([row.pop()])
    rows = -(-len(tail) // n_parts)
    last = [tail[p::n_parts] for p in range(n_parts)]  # dealt round-robin: sequences come fullest first
    return steps + [step + [[]] * (rows - len(step)) for step in last]


def split_for(plan: Plan, rank: int, world_size: int, worker: int, workers: int) -> Plan:
    """The share of one (rank, worker); len(plan) must be a multiple of world_size * workers (`balance_batches`).

    All steps but the last round go in contiguous blocks (each worker streams a narrow range of shards); the last
    round (the final n_parts steps) is dealt one step per part, so the short last round ends every share at the same
    step index. A DataLoader round-robins its workers, so rank r's k-th step is its worker (k % workers)'s
    (k // workers)-th step: every rank has the same rows in its k-th step.
    """
    parts = world_size * workers
    if len(plan) % parts:
        raise ValueError(f"plan of {len(plan)} steps does not split into {parts} equal parts; balance it first")
    if not plan:
        return []
    body = len(plan) // parts - 1
    p = rank * workers + worker
    return plan[p * body : (p + 1) * body] + [plan[len(plan) - parts + p]]


def steps_before(start_step: int, worker: int, workers: int) -> int:
    """How many of a worker's steps fall in the first `start_step` steps of its rank (round-robin order)."""
    return max(0, (start_step - worker + workers - 1) // workers)


def assemble(
    batch: list[list[int]],
    items: dict[int, dict],
    seq_len: int | None,
    n_seqs: int | None,
) -> PackedBatch:
    """Build a `PackedBatch` from a planned step and decoded items.

    items[i]: {"patches": [n_i, D], "coords": [n_i, 2], "grid": (rows, cols), "image": [3, H, W], "key": str,
    "label": int (-1 = unknown)}.
    seq_len: tokens per sequence (c_max), or None = the longest sequence of this step (fixed mode).
    n_seqs: sequences per step (pads with empty rows), or None = as planned.
    Image ids follow order of appearance (sequence by sequence), as `PackedBatch` requires.
    """
    lengths = [sum(items[i]["patches"].shape[0] for i in seq) for seq in batch]
    L = seq_len if seq_len is not None else max(lengths)
    if max(lengths) > L:
        raise ValueError(f"a planned sequence holds {max(lengths)} tokens, more than {L}: grids differ from the plan")
    S = n_seqs if n_seqs is not None else len(batch)
    first = items[batch[next(j for j, s in enumerate(batch) if s)][0]]["patches"]
    patches = first.new_zeros((S, L, first.shape[1]))
    coords = torch.zeros((S, L, 2), dtype=torch.long)
    image_id = torch.full((S, L), -1, dtype=torch.long)
    sizes, images, keys, labels = [], [], [], []
    for s, seq in enumerate(batch):
        pos = 0
        for i in seq:
            it = items[i]
            n = it["patches"].shape[0]
            patches[s, pos : pos + n] = it["patches"]
            coords[s, pos : pos + n] = it["coords"]
            image_id[s, pos : pos + n] = len(keys)
            sizes.append(it["grid"])
            images.append(it["image"])
            keys.append(it["key"])
            labels.append(it.get("label", -1))
            pos += n
    has_labels = any(lab >= 0 for lab in labels)
    return PackedBatch(
        patches=patches,
        coords=coords,
        image_id=image_id,
        image_sizes=torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
        images=images,
        keys=keys,
        labels=torch.tensor(labels, dtype=torch.long) if has_labels else None,
    )


def utilisation(plan: Plan, sizes: np.ndarray, seq_len: int) -> float:
    """Real tokens / computed tokens of a packed plan: every row of every step computes seq_len tokens."""
    real = sum(int(sizes[i]) for b in plan for s in b for i in s)
    return real / (seq_len * sum(len(b) for b in plan))
