"""Exact inner-product top-k in one pass over the keys, without the score matrix: a Triton kernel.

`exact_topk(queries @ keys.T, k)` writes a (queries, N) score matrix to device memory and reads it back
for the top-k: at 1M stored keys and a decode step that is 4 MB of scores per query and head, more
traffic than the keys themselves. Here each program loads a block of queries once, streams its share
of the keys tile by tile (`tl.dot` on the tile), and keeps a running top-k per query in registers:

* only scores above a query's current k-th best may enter; a tile with none (most of them, once a
  program has seen a few tiles: a new key beats the k-th best of n seen with probability ~k/n) costs
  one comparison and one reduction;
* the scores that may enter go in best first, each replacing the query's worst kept one: one max and
  one min per insertion, no sort (an earlier version merged tiles by a bitonic sort of score/position
  pairs packed into int64: measured on an H100, it ran at 2.5% of copy bandwidth, merging nearly every
  tile because its splits were too short to warm up);
* the keys are cut into splits (at least 8,192 keys each) so that a decode step (1 query) still fills
  the GPU; each split keeps its best `keep` (k rounded up to a power of two, at least 16), written
  (H, Q, splits, keep), and `torch.topk` picks the best k of those.

Exact: the same set as `exact_topk` (ties may come in another order). Inner products only (the L2
groups of kNN-LM keep the matrix product). Runs on CUDA; on CPU only under Triton's interpreter
(`TRITON_INTERPRET=1`), which is how the tests check it. `memlm.store.group` uses it when a torch
group's `kernel` option says "triton", or "auto" on a CUDA device with Triton installed.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch

PROGRAMS_WANTED = 1024  # splits are added until (heads x query blocks x splits) reaches this
MIN_KEYS_PER_SPLIT = 8192


@functools.cache  # asked by every new memory group; a failed import is not cached by Python
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def runs_on(device: torch.device) -> bool:
    """Whether the fused kernel can run on tensors of `device` here."""
    return triton_importable() and (device.type == "cuda" or interpreting())


def _kernel() -> Any:
    """The jitted kernel, imported on first use (only where Triton is installed). Triton decides whether
    its functions run in the interpreter when it is imported: TRITON_INTERPRET must be set before that."""
    from memlm.store.triton_topk import fused_topk_kernel

    return fused_topk_kernel


def fused_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, block_m: int | None = None,
               block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-min(k, N) inner products of each query (H, Q, D) among keys (H, N, D), best first:
    scores (H, Q, k) float32 and positions (H, Q, k) int64 — `exact_topk(queries @ keys.mT, k)` without
    the (H, Q, N) scores. Queries are cast to the keys' dtype (the product accumulates in float32)."""
    heads, count, dim = queries.shape
    items = keys.shape[1]
    if keys.shape[0] != heads or keys.shape[2] != dim:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} do not match")
    take = min(k, items)
    if take == 0 or count == 0:
        return (queries.new_zeros(heads, count, take, dtype=torch.float32),
                torch.zeros(heads, count, take, dtype=torch.int64, device=queries.device))
    if items >= 2**31:
        raise ValueError("fused_topk: positions must fit in 31 bits")
    queries = queries.to(keys.dtype).contiguous()
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    keep = max(16, 1 << (take - 1).bit_length())
    block_n = block_n or 64
    block_m = block_m or (16 if count <= 16 else 64)
    block_d = max(16, 1 << (dim - 1).bit_length())
    query_blocks = math.ceil(count / block_m)
    splits = max(1, min(math.ceil(items / MIN_KEYS_PER_SPLIT), math.ceil(PROGRAMS_WANTED / (heads * query_blocks))))
    keys_per_split = math.ceil(math.ceil(items / splits) / block_n) * block_n
    splits = math.ceil(items / keys_per_split)
    scores = torch.empty(heads, count, splits, keep, dtype=torch.float32, device=queries.device)
    positions = torch.empty(heads, count, splits, keep, dtype=torch.int32, device=queries.device)
    _kernel()[(heads, query_blocks, splits)](
        queries, keys, scores, positions, count, items, keys_per_split,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), scores.stride(0), scores.stride(1),
        scores.stride(2), DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, KEEP=keep)
    best, chosen = scores.view(heads, count, splits * keep).topk(take, dim=-1)
    return best, positions.view(heads, count, splits * keep).gather(-1, chosen).long()
