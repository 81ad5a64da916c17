"""The Triton kernel behind `memlm.store.fused_topk` (imported only where Triton is installed; read
that module's docstring for the method)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fused_topk_kernel(queries, keys, out_scores, out_positions, query_count, key_count, keys_per_split,
                      stride_qh, stride_qm, stride_kh, stride_kn, stride_oh, stride_om, stride_os,
                      DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      KEEP: tl.constexpr):
    """Program (head, query block, split): for each query, the best KEEP keys of the split (unsorted)
    into out_scores / out_positions[head, query, split, :]."""
    head, query_block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    tile_columns = tl.arange(0, BLOCK_N)
    slots = tl.arange(0, KEEP)
    query = tl.load(queries + head * stride_qh + rows[:, None] * stride_qm + dims[None, :],
                    mask=(rows[:, None] < query_count) & (dims[None, :] < DIM), other=0.0)
    best = tl.full((BLOCK_M, KEEP), float("-inf"), tl.float32)
    best_positions = tl.zeros((BLOCK_M, KEEP), tl.int32)
    first = split * keys_per_split
    last = tl.minimum(first + keys_per_split, key_count)
    for start in range(first, last, BLOCK_N):
        columns = start + tile_columns
        inside = columns < last
        tile = tl.load(keys + head * stride_kh + columns[None, :] * stride_kn + dims[:, None],
                       mask=inside[None, :] & (dims[:, None] < DIM), other=0.0)  # (BLOCK_D, BLOCK_N)
        scores = tl.where(inside[None, :], tl.dot(query, tile), float("-inf"))  # (BLOCK_M, BLOCK_N) float32
        # Only scores above a query's current KEEP-th best can enter; once warm, most tiles have none.
        candidates = tl.where(scores > tl.min(best, axis=1)[:, None], scores, float("-inf"))
        entering = tl.minimum(tl.max(tl.sum((candidates > float("-inf")).to(tl.int32), axis=1)), KEEP)
        for _ in range(entering):  # best candidate first: it replaces the query's worst kept one
            top, top_column = tl.max(candidates, axis=1, return_indices=True)
            worst, worst_slot = tl.min(best, axis=1, return_indices=True)
            replace = (top > worst)[:, None] & (slots[None, :] == worst_slot[:, None])
            best = tl.where(replace, top[:, None], best)
            best_positions = tl.where(replace, (start + top_column)[:, None], best_positions)
            candidates = tl.where(tile_columns[None, :] == top_column[:, None], float("-inf"), candidates)
    offsets = head * stride_oh + rows[:, None] * stride_om + split * stride_os + slots[None, :]
    tl.store(out_scores + offsets, best, mask=rows[:, None] < query_count)
    tl.store(out_positions + offsets, best_positions, mask=rows[:, None] < query_count)
