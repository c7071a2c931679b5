"""Invariants of the token-balanced packer (issue 4), property-tested on token counts alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amoe_core.data.packing import (
    assemble,
    balance_batches,
    best_fill,
    ffd_pack,
    split_for,
    steps_before,
    stream_pack,
    utilisation,
)
from amoe_core.errors import AmoeError

FAST = settings(max_examples=50, deadline=None)


@st.composite
def packing_case(draw):
    c_max = draw(st.integers(16, 300))
    hi = draw(st.integers(1, c_max))
    lo = draw(st.integers(1, hi))
    sizes = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=400))
    return (
        np.array(sizes),
        c_max,
        draw(st.integers(1, 16)),  # max images per sequence
        draw(st.integers(1, 8)),  # sequences per step
        draw(st.integers(1, 128)),  # shuffle buffer
        draw(st.integers(1, 4)),  # ranks
        draw(st.integers(1, 3)),  # workers
        draw(st.integers(0, 2**31)),
    )


@FAST
@given(packing_case())
def test_every_image_once_across_ranks_and_workers_within_bounds(case):
    sizes, c_max, max_items, S, buf, ranks, workers, _ = case
    seqs = stream_pack(sizes, c_max, max_items, buf)
    assert all(0 < len(seq) <= max_items and sizes[seq].sum() <= c_max for seq in seqs)
    parts = ranks * workers
    if len(seqs) % (S * parts) and len(sizes) < len(seqs) // (S * parts) * parts + parts:
        with pytest.raises(AmoeError, match="ranks x workers"):
            balance_batches(seqs, S, parts)
        return
    plan = balance_batches(seqs, S, parts)
    shares = [[split_for(plan, r, ranks, w, workers) for w in range(workers)] for r in range(ranks)]
    assert len({len(s) for rank in shares for s in rank}) == 1  # every rank and worker the same number of steps
    # each rank's k-th step (DataLoader round-robin over its workers) has the same rows on every rank: equal tokens
    per_rank = [[rank[k % workers][k // workers] for k in range(len(plan) // ranks)] for rank in shares]
    assert all(len({len(steps[k]) for steps in per_rank}) == 1 for k in range(len(plan) // ranks))
    assert all(len(step) == S for steps in per_rank for step in steps[: -workers or None])  # full but the last round
    seen = [i for steps in per_rank for step in steps for seq in step for i in seq]
    assert sorted(seen) == list(range(len(sizes)))  # exactly once, no image split (an index is a whole image)
    for steps in per_rank:
        for step in steps:
            assert 1 <= len(step) <= S and any(step)  # no empty step: every rank has images to learn from
            for seq in step:
                assert len(seq) <= max_items and sizes[seq].sum() <= c_max


@FAST
@given(
    st.lists(st.tuples(st.integers(1, 12), st.integers(1, 3)), min_size=1, max_size=5, unique_by=lambda t: t[0]),
    st.integers(0, 30),
    st.integers(0, 5),
    st.floats(0, 6),
)
def test_best_fill_is_the_exact_optimum(avail, free, slots, target):
    avail = sorted(avail)
    picks = best_fill(avail, free, slots, target)
    have = dict(avail)
    assert all(0 < k <= have[s] for s, k in picks)
    total, count = sum(s * k for s, k in picks), sum(k for _, k in picks)
    # brute force over every multiset: the largest total <= free with <= slots items, then the count nearest target
    options = {(0, 0)}
    for s, m in avail:
        options = {(t + s * k, c + k) for t, c in options for k in range(m + 1)}
    options = {(t, c) for t, c in options if t <= free and c <= slots}
    best = max(t for t, _ in options)
    assert total == best and count <= slots
    assert abs(count - target) == min(abs(c - target) for t, c in options if t == best)


def test_ffd_matches_a_hand_packed_instance():
    # FFD on (7, 5, 4, 3, 1) into bins of 10: [7, 3], [5, 4, 1]; with a cap of 2 images: [7, 3], [5, 4], [1]
    sizes = [4, 7, 1, 5, 3]
    assert ffd_pack(sizes, 10, 16) == [[1, 4], [3, 0, 2]]
    assert ffd_pack(sizes, 10, 2) == [[1, 4], [3, 0], [2]]


@pytest.mark.parametrize("kind", ["loguniform 4-64", "tiny-heavy 4/36/64"])
def test_stream_pack_fills_sequences_where_ffd_strands_small_images(kind):
    # c_max 256, <= 16 images per sequence, 8 sequences per step, 8 ranks, buffer 512 (the params.yaml defaults)
    rng = np.random.default_rng(0)
    if kind == "loguniform 4-64":
        sizes = np.exp(rng.uniform(np.log(4), np.log(65), 6000)).astype(int).clip(4, 64)
    else:  # like the demo pool at native size: many 28 px images (4 tokens) among large clip-art
        sizes = rng.choice([4, 16, 36, 60, 63, 64], size=6000, p=[0.62, 0.05, 0.07, 0.04, 0.1, 0.12])
    plan = balance_batches(stream_pack(sizes, 256, 16, 512), 8, 8)
    u_ours = utilisation(plan, sizes, 256)
    ffd = ffd_pack(sizes, 256, 16)  # even FFD over the whole epoch at once
    u_ffd = sizes.sum() / (256 * len(ffd))
    bound = sizes.sum() / (256 * max(sizes.sum() / 256, len(sizes) / 16))
    assert u_ours >= 0.97 and u_ours > u_ffd, (u_ours, u_ffd, bound)


def test_an_image_waits_a_bounded_time_in_the_buffer():
    # 7-token images rarely help fill 64-token sequences; they still leave soon after 2 x buffer newer images arrive
    rng = np.random.default_rng(0)
    sizes = np.where(rng.random(3000) < 0.05, 7, 64)
    buffer = 64
    seqs = stream_pack(sizes, 256, 16, buffer)
    packed_by = np.cumsum([len(s) for s in seqs])  # images packed once sequence n is made
    for n, seq in enumerate(seqs):
        assert all(packed_by[n] <= i + 3 * buffer for i in seq)


def test_image_larger_than_a_sequence_is_a_clear_error():
    with pytest.raises(AmoeError, match="raise c_max"):
        stream_pack(np.array([10, 300]), 256, 16, 8)


def test_balance_last_round_and_borrowing():
    # 7 sequences, 2 per step, 3 parts: one full round (3 steps x 2) + a last round of 3 steps x 1 row
    seqs = [[0, 1], [2], [3], [4], [5], [6], [7, 8]]
    plan = balance_batches(seqs, 2, 3)
    assert [len(b) for b in plan] == [2, 2, 2, 1, 1, 1]
    assert sorted(i for b in plan for s in b for i in s) == list(range(9)) and all(any(b) for b in plan)
    # a remainder of one sequence: split it, then borrow a row of the last full round (which keeps it as padding)
    plan = balance_batches([[0], [1], [2], [3], [4, 5]], 2, 2)
    assert [len(b) for b in plan] == [2, 2, 1, 1] and [4, 5] not in plan[-1] + plan[-2]
    plan = balance_batches([[0], [1], [2], [3], [4]], 2, 2)
    assert [len(b) for b in plan] == [2, 2, 1, 1] and plan[1] == [[2], []]
    with pytest.raises(AmoeError, match="2 images cannot give every one of 4"):
        balance_batches([[0], [1]], 1, 4)


def test_last_round_goes_to_the_end_of_every_share():
    plan = [[[i]] for i in range(12)]  # 12 steps, 4 parts: body of 2 steps each + one step of the last round
    assert split_for(plan, 1, 2, 0, 2) == [[[4]], [[5]], [[10]]]
    assert split_for(plan, 0, 1, 0, 1) == plan


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_resume_skips_exactly_the_round_robin_prefix(workers):
    plan = [[[i]] for i in range(12 * workers)]
    shares = [split_for(plan, 0, 1, w, workers) for w in range(workers)]
    rank_order = [shares[k % workers][k // workers] for k in range(len(plan))]  # DataLoader round-robin
    for start in range(len(plan) + 1):
        streams = [list(shares[w][steps_before(start, w, workers) :]) for w in range(workers)]
        # a resumed DataLoader round-robins from worker 0; the rank's stream continues at worker start % workers
        out, w = [], start % workers
        while any(streams):
            out.append(streams[w].pop(0))
            w = (w + 1) % workers
        assert out == rank_order[start:]


def _items(grids):
    items = {}
    for i, (r, c) in enumerate(grids):
        n = r * c
        rows, cols = torch.meshgrid(torch.arange(r), torch.arange(c), indexing="ij")
        items[i] = {
            "patches": torch.full((n, 3), float(i)),
            "coords": torch.stack([rows.reshape(-1), cols.reshape(-1)], 1),
            "grid": (r, c),
            "image": torch.zeros(3, r * 2, c * 2),
            "key": f"k{i}",
            "label": i % 3 - 1,
        }
    return items


def test_assemble_canonical_order_coords_restart_and_padding():
    grids = [(2, 3), (1, 1), (3, 2), (2, 2)]
    batch = assemble([[2, 0], [3, 1], []], _items(grids), seq_len=13, n_seqs=4)
    assert batch.patches.shape == (4, 13, 3) and batch.n_images == 4
    # ids in order of appearance, images contiguous, padding (-1) only at the end of a sequence
    assert batch.image_id[0].tolist() == [0] * 6 + [1] * 6 + [-1]
    assert batch.image_id[1].tolist() == [2] * 4 + [3] + [-1] * 8
    assert (batch.image_id[2:] == -1).all()
    assert batch.keys == ["k2", "k0", "k3", "k1"] and batch.image_sizes.tolist() == [[3, 2], [2, 3], [2, 2], [1, 1]]
    # coordinates restart at (0, 0) for every image and are row-major within it
    assert batch.coords[0, :6].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    assert batch.coords[0, 6:12].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert batch.patches[0, 6:12, 0].eq(0).all() and batch.patches[0, :6, 0].eq(2).all()
    assert batch.labels.tolist() == [1, -1, -1, 0]  # label i % 3 - 1 of images 2, 0, 3, 1
    # fixed mode: rows padded to the longest image of the step
    fixed = assemble([[0], [1], [2]], _items(grids), seq_len=None, n_seqs=None)
    assert fixed.patches.shape == (3, 6, 3) and fixed.image_id[1].tolist() == [1] + [-1] * 5
