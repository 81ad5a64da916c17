"""The tensor math of the `knn` memory's reads inside attention, apart from where the items come
from: rotary rotations (keys are stored un-rotated and placed at read time), the retrieval of one
layer assembled over batch rows, and the two ways it enters attention — `joint` (one softmax over
local, retrieved and recent keys; training-free) and `gated` (memory attention on its own, mixed
into the local output by a learned per-head gate that starts at zero)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from memlm.hooks import additive_mask, repeat_kv


class LayerRetrieval(NamedTuple):
    """Memory as one layer's queries see it: top-k items per query and the recent items shared by
    all queries, as raw q.k logits (-inf: nothing there)."""

    scores: torch.Tensor  # (B, H, T, k)
    values: torch.Tensor  # (B, H, T, k, D)
    recent_scores: torch.Tensor  # (B, H, T, R)
    recent_values: torch.Tensor  # (B, H, R, D)


def _rotate_half(states: torch.Tensor) -> torch.Tensor:
    first, second = states.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply a rotary rotation: states (..., D), cos/sin broadcastable to (..., R), R <= D."""
    rotated = cos.shape[-1]
    cos, sin = cos.to(states.dtype), sin.to(states.dtype)
    if rotated == states.shape[-1]:
        return torch.addcmul(states * cos, _rotate_half(states), sin)
    head, tail = states[..., :rotated], states[..., rotated:]
    return torch.cat((torch.addcmul(head * cos, _rotate_half(head), sin), tail), dim=-1)


def unrotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo rotary embedding (a rotation by minus the angle): keys (B, KVH, T, D), cos/sin (B, T, R)."""
    return rotate(keys, cos.unsqueeze(1), -sin.unsqueeze(1))


def gather_rows(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """table (H, N, D) contiguous, positions (H, ...) -> (H, ..., D): row positions[h, ...] of head h,
    as one index_select on the flattened table."""
    heads, items, dim = table.shape
    offsets = torch.arange(0, heads * items, items, device=positions.device).view(-1, *[1] * (positions.dim() - 1))
    return table.view(heads * items, dim).index_select(0, (positions + offsets).flatten()).view(*positions.shape, dim)


def stack_rows(rows: list, query: torch.Tensor, k: int) -> LayerRetrieval:
    """Per-row (scores, values, recent_scores, recent_values) -> one LayerRetrieval; rows without
    memory (None) and shorter recent blocks are padded with -inf logits and zero values."""
    if len(rows) == 1:
        scores, values, recent_scores, recent_values = rows[0]
        return LayerRetrieval(scores.unsqueeze(0), values.unsqueeze(0), recent_scores.unsqueeze(0),
                              recent_values.unsqueeze(0))
    batch, heads, length, dim = query.shape
    recent = max((row[2].shape[-1] for row in rows if row is not None), default=0)
    scores = torch.full((batch, heads, length, k), -math.inf, device=query.device)
    values = torch.zeros(batch, heads, length, k, dim, device=query.device, dtype=query.dtype)
    recent_scores = torch.full((batch, heads, length, recent), -math.inf, device=query.device)
    recent_values = torch.zeros(batch, heads, recent, dim, device=query.device, dtype=query.dtype)
    for index, row in enumerate(rows):
        if row is None:
            continue
        count = row[2].shape[-1]
        scores[index], values[index] = row[0], row[1]
        recent_scores[index, ..., :count], recent_values[index, :, :count] = row[2], row[3]
    return LayerRetrieval(scores, values, recent_scores, recent_values)


def joint_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, retrieved: LayerRetrieval, scaling: float,
                    dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One softmax over the local keys, the retrieved ones and the recent ones."""
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    local_scores = (query @ key.transpose(-1, -2)).float() * scaling  # (B, H, T, S)
    memory_scores = torch.cat([retrieved.scores, retrieved.recent_scores], dim=-1).float() * scaling
    softcap = kwargs.get("softcap")
    if softcap:
        local_scores = torch.tanh(local_scores / softcap) * softcap
        memory_scores = torch.tanh(memory_scores / softcap) * softcap
    local_scores = local_scores + additive_mask(attention_mask, query.shape[2], key.shape[2], local_scores.dtype,
                                                local_scores.device, kwargs.get("sliding_window"))
    weights = torch.softmax(torch.cat([local_scores, memory_scores], dim=-1), dim=-1).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    local_length, top_k = key.shape[2], retrieved.scores.shape[-1]
    output = weights[..., :local_length] @ value  # (B, H, T, D)
    output = output + torch.einsum("bhtk,bhtkd->bhtd", weights[..., local_length: local_length + top_k],
                                   retrieved.values)
    output = output + weights[..., local_length + top_k:] @ retrieved.recent_values
    return output.transpose(1, 2).contiguous(), None


def gated_attention(local_output: torch.Tensor, retrieved: LayerRetrieval, gate: torch.Tensor, scaling: float,
                    dtype: torch.dtype) -> torch.Tensor:
    """Attention over the retrieved and recent items on their own, mixed into the local output
    (B, T, H, D) by the per-head `gate` (H,); queries with nothing in memory keep the local output."""
    memory_scores = torch.cat([retrieved.scores, retrieved.recent_scores], dim=-1).float() * scaling
    memory_weights = torch.softmax(memory_scores, dim=-1).nan_to_num(0.0)  # (B, H, T, k + R)
    top_k = retrieved.scores.shape[-1]
    memory_output = (torch.einsum("bhtk,bhtkd->bthd", memory_weights[..., :top_k].to(dtype),
                                  retrieved.values)
                     + torch.einsum("bhtr,bhrd->bthd", memory_weights[..., top_k:].to(dtype),
                                    retrieved.recent_values))
    gate = gate.view(1, 1, -1, 1).to(local_output.dtype)
    mixed = local_output + gate * (memory_output.to(local_output.dtype) - local_output)
    has_memory = torch.isfinite(memory_scores).any(-1).transpose(1, 2).unsqueeze(-1)  # (B, T, H, 1)
    return torch.where(has_memory, mixed, local_output)
