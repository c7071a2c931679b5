"""Packed attention equals attention over each image alone; segment reductions equal per-image reductions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from amoe_core.data.packed import PackedBatch
from amoe_core.models.packed_attention import (
    PackedMask,
    packed_attention,
    packed_mask,
    segment_count,
    segment_mean,
    segment_sum,
)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.lists(st.integers(1, 12), min_size=0, max_size=4), min_size=1, max_size=3),
    pad=st.integers(0, 5),
    seed=st.integers(0, 1000),
)
def test_packed_attention_equals_per_image_attention(lengths, pad, seed):
    g = torch.Generator().manual_seed(seed)
    n = max(sum(seq) for seq in lengths) + pad
    image_id = torch.full((len(lengths), n), -1)
    next_id = 0
    for s, seq in enumerate(lengths):
        pos = 0
        for length in seq:
            image_id[s, pos : pos + length] = next_id
            next_id, pos = next_id + 1, pos + length
    q, k, v = (torch.randn(len(lengths), 2, n, 8, generator=g) for _ in range(3))
    out = packed_attention(q, k, v, image_id)
    assert torch.isfinite(out).all()  # padding rows too: they attend to themselves only
    for i in range(next_id):
        s, pos = (image_id == i).nonzero(as_tuple=True)
        ref = F.scaled_dot_product_attention(q[s[0], :, pos][None], k[s[0], :, pos][None], v[s[0], :, pos][None])
        torch.testing.assert_close(out[s[0], :, pos], ref[0], atol=1e-5, rtol=1e-5)


def test_sinks_scale_each_row_by_sigmoid_of_lse_minus_sink_with_gradients():
    """The released attention sink: out = softmax(logits) V * sigmoid(logsumexp(logits) - s_h), per image."""
    g = torch.Generator().manual_seed(0)
    image_id = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]])
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g, requires_grad=True) for _ in range(3))
    sinks = torch.randn(3, generator=g, requires_grad=True)
    out = packed_attention(q, k, v, image_id, sinks)
    logits = (q @ k.transpose(-1, -2)) / 8**0.5
    logits = logits.masked_fill(~packed_mask(image_id), float("-inf"))
    lse = logits.logsumexp(-1, keepdim=True)
    ref = torch.softmax(logits, -1) @ v * torch.sigmoid(lse - sinks.view(1, 3, 1, 1))
    real = image_id >= 0  # padding rows attend to themselves only; their value is irrelevant
    torch.testing.assert_close(out.transpose(1, 2)[real], ref.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad((out.transpose(1, 2)[real] ** 2).sum(), [q, sinks])
    grads_ref = torch.autograd.grad((ref.transpose(1, 2)[real] ** 2).sum(), [q, sinks])
    for a, b in zip(grads, grads_ref, strict=True):  # float32, summation order only
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_mask_is_block_diagonal():
    image_id = torch.tensor([[0, 0, 1, -1]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(packed_mask(image_id)[0, 0], expected)


def test_segment_ops_match_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    seg = torch.randint(0, 7, (50,), generator=g)
    seg[seg == 5] = 4  # segment 5 is empty
    for i in range(7):
        rows = x[seg == i]
        torch.testing.assert_close(segment_sum(x, seg, 7)[i], rows.sum(0))
        torch.testing.assert_close(segment_mean(x, seg, 7)[i], rows.mean(0) if len(rows) else torch.zeros(3).double())
        assert segment_count(seg, 7)[i] == len(rows)


def test_one_mask_shared_by_calls_equals_a_mask_per_call():
    """A `PackedMask` built once per forward (the student and the packed teachers share one across layers) gives
    exactly what building the mask from the image ids in every call gives, with and without sinks."""
    g = torch.Generator().manual_seed(3)
    image_id = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]])
    mask = PackedMask(image_id)
    sinks = torch.randn(3, generator=g)
    for _ in range(3):  # reused: the sink's extended mask is built on first use only
        q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
        assert torch.equal(packed_attention(q, k, v, mask), packed_attention(q, k, v, image_id))
        assert torch.equal(packed_attention(q, k, v, mask, sinks), packed_attention(q, k, v, image_id, sinks))


def test_the_student_builds_its_mask_once_per_forward(monkeypatch):
    import amoe_core.models.packed_attention as pa
    from amoe_core.config import StudentConfig
    from amoe_core.models.heads import TeacherDims
    from amoe_core.models.student import build_student

    built = []
    monkeypatch.setattr(pa, "packed_mask", lambda ids: built.append(ids) or packed_mask(ids))
    torch.manual_seed(0)
    student = build_student(StudentConfig(name="tiny", overrides={"depth": 3}), {"t": TeacherDims(8, 0)})
    image_id = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]])
    coords = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 0], [1, 0], [0, 0]]).expand(2, 6, 2)
    batch = PackedBatch(torch.rand(2, 6, 768), coords.clone(), image_id, torch.tensor([[1, 3], [2, 1], [2, 2]]))
    with torch.no_grad():
        student(batch)
    assert len(built) == 1  # 3 layers, one mask
