"""The tensor math of the knn memory's reads (`memlm.memories.knn.attention`), each function against
a computation written out by hand: rotary rotations, per-head row gathers, batch rows stacked with
padding, and the joint and gated attention over what was retrieved."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from memlm.hooks import eager_attention
from memlm.memories.knn.attention import (
    LayerRetrieval,
    gated_attention,
    gather_rows,
    joint_attention,
    rotate,
    stack_rows,
    unrotate,
)


def _angles(*shape: int, rotated: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin as rotary embeddings give them: each angle once for each half of the rotated dims."""
    angles = torch.rand(*shape, rotated // 2) * 6.0
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate_by_hand(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    out = states.clone()
    rotated = cos.shape[-1]
    half = rotated // 2
    for i in range(half):  # dims i and i + half turn as one pair
        first, second = states[..., i], states[..., i + half]
        out[..., i] = first * cos[..., i] - second * sin[..., i]
        out[..., i + half] = second * cos[..., i + half] + first * sin[..., i + half]
    return out  # dims past `rotated` untouched


@pytest.mark.parametrize("rotated", [8, 4])  # every dim rotated, or only the first half of them
def test_rotate_turns_each_pair_of_dims_and_leaves_the_rest(rotated):
    torch.manual_seed(0)
    states = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    cos, sin = _angles(2, 1, 5, rotated=rotated)  # float32: converted to the states' dtype
    turned = rotate(states, cos, sin)
    assert turned.dtype == torch.float64 and turned.shape == states.shape
    torch.testing.assert_close(turned, _rotate_by_hand(states, cos.double(), sin.double()))
    # unrotate: (B, KVH, T, D) keys, cos/sin (B, T, R); a rotation back by the same angle
    torch.testing.assert_close(unrotate(turned, cos[:, 0], sin[:, 0]), states)


def test_rotating_in_bfloat16_stays_bfloat16():
    states = torch.randn(1, 2, 3, 8).bfloat16()
    cos, sin = _angles(1, 1, 3, rotated=8)
    turned = rotate(states, cos, sin)
    assert turned.dtype == torch.bfloat16
    torch.testing.assert_close(turned.float(), _rotate_by_hand(states.float(), cos, sin), atol=0.05, rtol=0.02)


def test_gather_rows_reads_each_heads_own_rows():
    table = torch.randn(3, 7, 4)
    positions = torch.randint(0, 7, (3, 2, 5))
    gathered = gather_rows(table, positions)
    assert gathered.shape == (3, 2, 5, 4)
    for head in range(3):
        torch.testing.assert_close(gathered[head], table[head][positions[head]])
    flat = torch.randint(0, 7, (3, 6))  # positions of one dim fewer
    torch.testing.assert_close(gather_rows(table, flat), torch.stack([table[h][flat[h]] for h in range(3)]))


def _row(heads, length, k, recent, dim, dtype=torch.float32):
    return (torch.randn(heads, length, k), torch.randn(heads, length, k, dim).to(dtype),
            torch.randn(heads, length, recent), torch.randn(heads, recent, dim).to(dtype))


def test_stack_rows_pads_rows_without_memory_and_shorter_recent_blocks():
    heads, length, k, dim = 2, 3, 4, 5
    query = torch.randn(3, heads, length, dim, dtype=torch.float64)
    rows = [_row(heads, length, k, 2, dim, torch.float64), None, _row(heads, length, k, 0, dim, torch.float64)]
    stacked = stack_rows(rows, query, k)
    assert stacked.scores.shape == (3, heads, length, k) and stacked.values.shape == (3, heads, length, k, dim)
    assert stacked.recent_scores.shape == (3, heads, length, 2) and stacked.recent_values.shape == (3, heads, 2, dim)
    assert stacked.values.dtype == stacked.recent_values.dtype == torch.float64
    for part in range(4):
        torch.testing.assert_close(stacked[part][0], rows[0][part])
    assert torch.isneginf(stacked.scores[1]).all() and torch.isneginf(stacked.recent_scores[1]).all()
    assert not stacked.values[1].any() and not stacked.recent_values[1].any()
    torch.testing.assert_close(stacked.scores[2], rows[2][0])
    torch.testing.assert_close(stacked.values[2], rows[2][1])
    assert torch.isneginf(stacked.recent_scores[2]).all() and not stacked.recent_values[2].any()
    # rows without memory anywhere: no recent slots at all
    empty = stack_rows([None, None], query[:2], k)
    assert empty.recent_scores.shape == (2, heads, length, 0) and torch.isneginf(empty.scores).all()
    # a single row is the row itself, with a batch dim
    single = stack_rows(rows[:1], query[:1], k)
    for part in range(4):
        torch.testing.assert_close(single[part], rows[0][part].unsqueeze(0))


def _retrieved(batch, heads, length, k, recent, dim, empty_rows=()):
    scores = torch.randn(batch, heads, length, k) * 3
    scores[..., -1] = -math.inf  # a slot with nothing there
    recent_scores = torch.randn(batch, heads, length, recent) * 3
    for row in empty_rows:
        scores[row], recent_scores[row] = -math.inf, -math.inf
    return LayerRetrieval(scores, torch.randn(batch, heads, length, k, dim), recent_scores,
                          torch.randn(batch, heads, recent, dim))


def _joint_by_hand(query, key, value, retrieved, scaling, softcap=None, window=None, mask=None):
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    source = key.shape[2]
    out = torch.zeros(batch, length, heads, dim)
    for b in range(batch):
        for h in range(heads):
            k_, v_ = key[b, h // groups], value[b, h // groups]
            for t in range(length):
                position = source - length + t
                local = (k_ @ query[b, h, t]) * scaling
                memory = torch.cat([retrieved.scores[b, h, t], retrieved.recent_scores[b, h, t]]) * scaling
                if softcap:
                    local, memory = torch.tanh(local / softcap) * softcap, torch.tanh(memory / softcap) * softcap
                allowed = torch.arange(source) <= position
                if window:
                    allowed &= torch.arange(source) > position - window
                if mask is not None:
                    allowed = mask[b, 0, t]
                local = local.masked_fill(~allowed, -math.inf)
                weights = torch.softmax(torch.cat([local, memory]), dim=0)
                k_top = retrieved.scores.shape[-1]
                out[b, t, h] = (weights[:source] @ v_ + weights[source:source + k_top] @ retrieved.values[b, h, t]
                                + weights[source + k_top:] @ retrieved.recent_values[b, h])
    return out


@pytest.mark.parametrize("options", [{}, {"softcap": 2.0}, {"sliding_window": 3}, {"mask": True}])
def test_joint_attention_is_one_softmax_over_local_retrieved_and_recent_keys(options):
    torch.manual_seed(1)
    batch, heads, kv_heads, length, source, dim, k, recent = 2, 4, 2, 3, 5, 8, 3, 2
    query = torch.randn(batch, heads, length, dim)
    key, value = torch.randn(batch, kv_heads, source, dim), torch.randn(batch, kv_heads, source, dim)
    retrieved = _retrieved(batch, heads, length, k, recent, dim)
    mask = None
    if options.get("mask"):  # a boolean mask (True: attend), as transformers hands kernels
        mask = torch.rand(batch, 1, length, source) > 0.3
        mask[..., 0] = True
    module = nn.Module().eval()
    output, weights = joint_attention(module, query, key, value, mask, retrieved, scaling=0.7,
                                      softcap=options.get("softcap"), sliding_window=options.get("sliding_window"))
    assert weights is None and output.shape == (batch, length, heads, dim) and output.is_contiguous()
    expected = _joint_by_hand(query, key, value, retrieved, 0.7, options.get("softcap"), options.get("sliding_window"),
                              mask)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_joint_attention_with_nothing_retrieved_is_local_attention_and_dropout_only_in_training():
    torch.manual_seed(2)
    query, key, value = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    nothing = LayerRetrieval(torch.full((1, 2, 3, 2), -math.inf), torch.randn(1, 2, 3, 2, 4),
                             torch.full((1, 2, 3, 1), -math.inf), torch.randn(1, 2, 1, 4))
    module = nn.Module().eval()
    output, _ = joint_attention(module, query, key, value, None, nothing, scaling=0.5, dropout=0.9)
    torch.testing.assert_close(output, eager_attention(module, query, key, value, None, scaling=0.5)[0])
    module.train()
    torch.manual_seed(3)
    dropped, _ = joint_attention(module, query, key, value, None, nothing, scaling=0.5, dropout=0.9)
    assert not torch.allclose(dropped, output)
    # training, with no dropout asked for (by default or as 0.0): nothing dropped
    torch.testing.assert_close(joint_attention(module, query, key, value, None, nothing, scaling=0.5)[0], output)
    torch.testing.assert_close(joint_attention(module, query, key, value, None, nothing, scaling=0.5, dropout=0.0)[0],
                               output)


def test_joint_attention_in_bfloat16_stays_bfloat16():
    torch.manual_seed(6)
    query, key, value = (torch.randn(1, 2, 3, 8).bfloat16() for _ in range(3))
    retrieved = _retrieved(1, 2, 3, 2, 1, 8)
    retrieved = retrieved._replace(values=retrieved.values.bfloat16(), recent_values=retrieved.recent_values.bfloat16())
    output, _ = joint_attention(nn.Module().eval(), query, key, value, None, retrieved, scaling=0.35)
    assert output.dtype == torch.bfloat16
    expected = _joint_by_hand(query.float(), key.float(), value.float(), retrieved._replace(
        values=retrieved.values.float(), recent_values=retrieved.recent_values.float()), 0.35)
    torch.testing.assert_close(output.float(), expected, atol=0.05, rtol=0.02)


def _gated_by_hand(local_output, retrieved, gate, scaling):
    batch, length, heads, dim = local_output.shape
    out = local_output.clone()
    for b in range(batch):
        for h in range(heads):
            for t in range(length):
                scores = torch.cat([retrieved.scores[b, h, t], retrieved.recent_scores[b, h, t]]) * scaling
                if torch.isneginf(scores).all():
                    continue  # nothing in memory: the local output alone
                weights = torch.softmax(scores, dim=0)
                k_top = retrieved.scores.shape[-1]
                memory = weights[:k_top] @ retrieved.values[b, h, t] + weights[k_top:] @ retrieved.recent_values[b, h]
                out[b, t, h] = (1 - gate[h]) * local_output[b, t, h] + gate[h] * memory
    return out


def test_gated_attention_mixes_memory_in_by_each_heads_gate_and_leaves_queries_without_memory_alone():
    torch.manual_seed(4)
    batch, heads, length, dim, k, recent = 3, 4, 3, 5, 3, 2
    local_output = torch.randn(batch, length, heads, dim)
    retrieved = _retrieved(batch, heads, length, k, recent, dim, empty_rows=(1,))
    gate = torch.tensor([0.0, 0.25, 0.5, 1.0])
    mixed = gated_attention(local_output, retrieved, gate, 0.6, torch.float32)
    torch.testing.assert_close(mixed, _gated_by_hand(local_output, retrieved, gate, 0.6), atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed[1], local_output[1])  # row 1 has nothing in memory
    assert torch.equal(mixed[:, :, 0], local_output[:, :, 0])  # a closed gate reads nothing
    # only the recent items there (no top-k hit): still mixed in
    only_recent = retrieved._replace(scores=torch.full_like(retrieved.scores, -math.inf))
    torch.testing.assert_close(gated_attention(local_output, only_recent, gate, 0.6, torch.float32),
                               _gated_by_hand(local_output, only_recent, gate, 0.6), atol=1e-5, rtol=1e-5)


def test_gated_attention_keeps_the_local_outputs_dtype():
    torch.manual_seed(5)
    local_output = torch.randn(1, 2, 2, 4).bfloat16()
    retrieved = _retrieved(1, 2, 2, 2, 1, 4)
    retrieved = retrieved._replace(values=retrieved.values.bfloat16(), recent_values=retrieved.recent_values.bfloat16())
    gate = torch.tensor([0.5, 1.0])
    mixed = gated_attention(local_output, retrieved, gate, 0.5, torch.bfloat16)
    assert mixed.dtype == torch.bfloat16
    expected = _gated_by_hand(local_output.float(), retrieved._replace(values=retrieved.values.float(),
                              recent_values=retrieved.recent_values.float()), gate, 0.5)
    torch.testing.assert_close(mixed.float(), expected, atol=0.05, rtol=0.02)
