"""Page-selected search: sub-linear top-k over a large key table, for many queries at once.

Exact search over N stored keys costs every query N dot products and a top-k over N scores. When a
whole segment queries memory at every layer (memorizing a long document with `knn-joint`), that
cost grows with the store until it dwarfs the model's own forward. Page selection (as in Quest,
Tang et al. 2024, and InfLLM, Xiao et al. 2024) keeps it nearly flat:

1. Keys are cut into pages of `page_size` consecutive items. Each page keeps the element-wise
   maximum and minimum of its keys, so for any query q an upper bound of q.k over the page is
   relu(q).k_max + min(q, 0).k_min: two matrix products over N / page_size summaries.
2. Queries are taken in blocks of `query_block` consecutive ones (neighbouring tokens of one head
   ask for similar things): each block keeps the `probe_pages` pages with the highest bound for
   any of its queries; those pages' keys are the block's candidates.
3. Each query scores its block's candidates exactly and keeps its top-k.

The result is approximate (a true top-k item on a page no query of the block ranks high is
missed); the callers recompute attention logits from the stored keys, so only the choice of items
can differ. Below `exact_below` items, or for a handful of queries (decode steps, where exact
search reads each key once and is bound by kernel launches anyway), the search stays exact.
Summaries are derived data: rebuilt lazily after appends (only the pages that changed) and in full
after removals; they are never saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from memlm.errors import ConfigError

SEARCH_MODES = ("pages", "exact")
PAGE_OPTIONS = ("search", "page_size", "probe_pages", "query_block", "exact_below")
BOUND_BUDGET = 1 << 28  # elements of one (heads, queries, pages) bound matrix; queries are chunked above it


@dataclass(frozen=True)
class PageSearch:
    """How a torch-backed group searches: exact, or page-selected above `exact_below` items.

    Args:
        search: "pages" (page selection above `exact_below` items) or "exact".
        page_size: consecutive items summarised together.
        probe_pages: pages each block of queries reads exactly (candidates = probe_pages * page_size).
        query_block: consecutive queries sharing one set of pages.
        exact_below: stores with at most this many searched items are searched exactly.
    """

    search: str = "pages"
    page_size: int = 64
    probe_pages: int = 32
    query_block: int = 16
    exact_below: int = 8192

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PageSearch:
        """Pop the page options out of a backend's options (the rest go to the index)."""
        picked = {name: options.pop(name) for name in PAGE_OPTIONS if name in options}
        search = cls(**picked)
        if search.search not in SEARCH_MODES:
            raise ConfigError(f"backend_options search must be one of {SEARCH_MODES}, got {search.search!r}")
        for name in ("page_size", "probe_pages", "query_block", "exact_below"):
            value = getattr(search, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"backend_options {name} must be a positive integer, got {value!r}")
        return search

    def applies(self, items: int, queries: int) -> bool:
        return self.search == "pages" and items > self.exact_below and queries >= 2 * self.query_block


class PageSummaries:
    """Element-wise max and min of each page of a (heads, N, dim) key table, kept up to date lazily."""

    def __init__(self, search: PageSearch):
        self.search = search
        self.maximum: torch.Tensor | None = None  # (heads, pages, dim)
        self.minimum: torch.Tensor | None = None
        self.items = 0  # items the summaries describe (the last page may be partial)

    def invalidate(self) -> None:
        """After a removal positions shift: every page is rebuilt at the next search."""
        self.items = 0

    def refresh(self, keys: torch.Tensor) -> None:
        """Bring the summaries up to date with `keys` (heads, N, dim), which only grew since the
        last call (or `invalidate` was called): the pages from the first incomplete one on."""
        heads, count, dim = keys.shape
        size = self.search.page_size
        pages = -(-count // size)
        if self.maximum is None or self.maximum.shape[1] < pages or self.maximum.shape[0] != heads:
            capacity = 1 << max(pages - 1, 0).bit_length()
            grown = [torch.empty(heads, capacity, dim, device=keys.device, dtype=keys.dtype) for _ in range(2)]
            if self.maximum is not None and self.maximum.shape[0] == heads:
                done = self.items // size
                grown[0][:, :done], grown[1][:, :done] = self.maximum[:, :done], self.minimum[:, :done]
            else:
                self.items = 0
            self.maximum, self.minimum = grown
        first = self.items // size  # the first page that changed
        if first * size >= count:
            return
        body = keys[:, first * size: (pages - 1) * size].unflatten(1, (-1, size))  # complete pages
        if body.shape[1]:
            self.maximum[:, first: pages - 1] = body.amax(2)
            self.minimum[:, first: pages - 1] = body.amin(2)
        last = keys[:, (pages - 1) * size: count]  # the last page, possibly partial
        self.maximum[:, pages - 1] = last.amax(1)
        self.minimum[:, pages - 1] = last.amin(1)
        self.items = count

    def candidates(self, queries: torch.Tensor, limit: int) -> torch.Tensor:
        """queries (heads, blocks * query_block, dim) -> positions (heads, blocks, probe_pages * page_size)
        of the pages each block of queries reads; positions at or past `limit` lie beyond the searched
        items and must be masked by the caller."""
        heads, count, dim = queries.shape
        size, block = self.search.page_size, self.search.query_block
        pages = -(-limit // size)
        maximum, minimum = self.maximum[:, :pages], self.minimum[:, :pages]
        positive, negative = queries.clamp(min=0), queries.clamp(max=0)
        chunk = max(block, (BOUND_BUDGET // max(heads * pages, 1)) // block * block)
        best = []
        for first in range(0, count, chunk):
            # upper bound of q.k over each page: (heads, q, pages), then the best any query of a block gives
            bound = (torch.matmul(positive[:, first: first + chunk], maximum.transpose(1, 2))
                     + torch.matmul(negative[:, first: first + chunk], minimum.transpose(1, 2)))
            best.append(bound.unflatten(1, (-1, block)).amax(2))
        block_bound = torch.cat(best, dim=1) if len(best) > 1 else best[0]  # (heads, blocks, pages)
        chosen = block_bound.topk(min(self.search.probe_pages, pages), dim=-1).indices  # (heads, blocks, p)
        offsets = torch.arange(size, device=queries.device)
        return (chosen.unsqueeze(-1) * size + offsets).flatten(-2)


def page_search(summaries: PageSummaries, table: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor,
                k: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each query among the first `limit` items by page selection.

    table: the contiguous (heads, capacity, dim) storage behind `keys` (heads, N, dim), so candidate
    rows are one index_select; queries (heads, Q, dim) in the keys' dtype. Returns scores (heads, Q, k)
    float32 and positions (heads, Q, min(k, candidates)) int64, best first (-inf: past `limit`)."""
    summaries.refresh(keys)
    heads, count, dim = queries.shape
    block = summaries.search.query_block
    padded = math.ceil(count / block) * block
    if padded != count:  # whole blocks; the padding queries' results are dropped
        queries = torch.cat([queries, queries.new_zeros(heads, padded - count, dim)], dim=1)
    positions = summaries.candidates(queries, limit)  # (heads, blocks, C)
    capacity = table.shape[1]
    offsets = torch.arange(0, heads * capacity, capacity, device=table.device).view(-1, 1, 1)
    rows = table.view(heads * capacity, dim).index_select(0, (positions.clamp(max=capacity - 1) + offsets).flatten())
    candidate_keys = rows.view(*positions.shape, dim)  # (heads, blocks, C, dim)
    scores = torch.matmul(queries.unflatten(1, (-1, block)), candidate_keys.transpose(-1, -2)).float()
    scores = scores.masked_fill((positions >= limit).unsqueeze(2), -math.inf)  # (heads, blocks, block, C)
    take = min(k, positions.shape[-1])
    top_scores, top = scores.topk(take, dim=-1)
    found = positions.unsqueeze(2).expand(-1, -1, block, -1).gather(-1, top)
    top_scores, found = top_scores.flatten(1, 2)[:, :count], found.flatten(1, 2)[:, :count]
    found = found.masked_fill(torch.isinf(top_scores), 0)
    return top_scores, found
