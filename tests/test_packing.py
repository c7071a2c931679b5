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
    count_aware_pack,
    ffd_pack,
    fixed_batches,
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
    sizes, c_max, max_items, S, buf, ranks, workers, seed = case
    plan = stream_pack(sizes, c_max, max_items, S, buf, np.random.default_rng(seed))
    if len(sizes) < len(plan) + (-len(plan)) % (ranks * workers):
        with pytest.raises(AmoeError, match="ranks x workers"):
            balance_batches(plan, ranks * workers)
        return
    plan = balance_batches(plan, ranks * workers)
    shares = [split_for(plan, r, ranks, w, workers) for r in range(ranks) for w in range(workers)]
    assert len({len(s) for s in shares}) == 1  # every rank and worker the same number of steps
    seen = [i for share in shares for step in share for seq in step for i in seq]
    assert sorted(seen) == list(range(len(sizes)))  # exactly once, no image split (an index is a whole image)
    for share in shares:
        for step in share:
            assert 1 <= len(step) <= S and any(step)  # no empty step: every rank has images to learn from
            for seq in step:
                assert len(seq) <= max_items
                assert sizes[seq].sum() <= c_max


@FAST
@given(packing_case())
def test_pool_packers_respect_capacity_and_cap(case):
    sizes, c_max, max_items, *_, seed = case
    order = np.random.default_rng(seed).permutation(len(sizes))
    for pack in (count_aware_pack, ffd_pack):
        bins = pack(sizes, c_max, max_items, order)
        assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
        assert all(0 < len(b) <= max_items and sizes[b].sum() <= c_max for b in bins)


def test_ffd_matches_a_hand_packed_instance():
    # FFD on (7, 5, 4, 3, 1) into bins of 10: [7, 3], [5, 4, 1]; with a cap of 2 images: [7, 3], [5, 4], [1]
    sizes = [4, 7, 1, 5, 3]
    assert ffd_pack(sizes, 10, 16) == [[1, 4], [3, 0, 2]]
    assert ffd_pack(sizes, 10, 2) == [[1, 4], [3, 0], [2]]


def test_count_aware_beats_ffd_when_the_image_cap_binds():
    # log-uniform 4-64 tokens, c_max 256, <= 16 images: FFD strands small images in capped sequences
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.uniform(np.log(4), np.log(65), 4000)).astype(int).clip(4, 64)
    ours = stream_pack(sizes, 256, 16, 8, 512, np.random.default_rng(1))
    ffd = stream_pack(sizes, 256, 16, 8, 512, np.random.default_rng(1), pack=ffd_pack)
    u_ours, u_ffd = utilisation(ours, sizes, 256, 8), utilisation(ffd, sizes, 256, 8)
    assert u_ours >= 0.97 and u_ours > u_ffd + 0.05, (u_ours, u_ffd)


def test_image_larger_than_a_sequence_is_a_clear_error():
    with pytest.raises(AmoeError, match="raise c_max"):
        stream_pack(np.array([10, 300]), 256, 16, 1, 8, np.random.default_rng(0))


def test_balance_moves_sequences_without_losing_images():
    plan = [[[0, 1], [2]], [[3], [4]], [[5], [6, 7]]]  # 3 steps -> 4 parts
    out = balance_batches(plan, 4)
    assert len(out) == 4 and sorted(i for b in out for s in b for i in s) == list(range(8))
    one_image_per_step = [[[0]], [[1]]]
    with pytest.raises(AmoeError, match="2 images cannot give every one of 4"):
        balance_batches(one_image_per_step, 4)


def test_fixed_mode_one_image_per_row():
    plan = fixed_batches(10, 4)
    assert [len(b) for b in plan] == [4, 4, 2] and all(len(s) == 1 for b in plan for s in b)


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
