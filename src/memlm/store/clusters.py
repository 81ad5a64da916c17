"""Cluster-ordered page search: sub-linear top-k over a large key table, for many queries at once.

Exact search over N stored keys costs every query N dot products and a top-k over N scores. When a
whole segment queries memory at every layer (memorizing a long document with `knn-joint`), that
cost grows with the store until it dwarfs the model's own forward. This module keeps it nearly flat
with an inverted-file layout (IVF, as in FAISS), kept on the device and searched in a few batched
kernels for all heads and queries at once:

1. k-means centroids are trained on a sample of each head's keys once the store passes
   `exact_below` items, and again each time it has grown 4x since (8K, 32K, 128K, 512K...).
2. Every key is assigned to its nearest centroid (only new keys, after appends), and the keys are
   ordered by cluster: that order, cut into pages of `page_size`, gives pages of similar keys,
   each summarised by the mean of its keys.
3. Each query scores the page means, reads the `probe_pages` best pages exactly and keeps its
   top-k. Keys appended since the last ordering (at most `exact_below` of them: the order is rebuilt
   when more arrive) are searched exactly and merged in.

An earlier design cut pages out of the keys in insertion order and bounded q.k per page by its
element-wise max/min (Quest-style): consecutive tokens' keys are too varied for that bound to pick
the right pages, and recall fell to 11% at 256K stored keys (docs/benchmarks.md). Grouping keys by
similarity first is what makes page selection work at scale.

The result is approximate (a true top-k item on a page the query does not pick is missed); callers
recompute attention logits from the stored keys, so only the choice of items can differ. Below
`exact_below` items, or for fewer than `min_queries` queries (decode steps, where exact search reads
each key once and is bound by kernel launches anyway), the search stays exact. The cluster state is
derived data: rebuilt after removals, never saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from memlm.errors import ConfigError

SEARCH_MODES = ("clusters", "exact")
SEARCH_OPTIONS = ("search", "page_size", "probe_pages", "exact_below", "min_queries", "kernel")
SEARCH_KERNELS = ("torch", "triton", "auto")  # how exact search runs: memlm.store.fused_topk
GATHER_BUDGET = 1 << 27  # elements of one (heads, queries, candidates, dim) gather; queries are chunked above it
TRAIN_SAMPLE = 65536  # keys per head that k-means sees
TRAIN_ITERATIONS = 10
PAGES_PER_CLUSTER = 2  # fine clusters: within one, keys stay in insertion order
MAX_CLUSTERS = 4096


@dataclass(frozen=True)
class ClusterSearch:
    """How a torch-backed group searches: exact, or through cluster-ordered pages above `exact_below` items.

    Args:
        search: "exact" (the default: every key scored) or "clusters" (cluster-ordered page search
            above `exact_below` items; opt-in: it loses perplexity, see docs/benchmarks.md).
        page_size: keys (of one cluster, in cluster order) summarised by one mean.
        probe_pages: pages each query reads exactly (candidates = probe_pages * page_size).
        exact_below: stores with at most this many items are searched exactly; also the most keys
            appended since the last cluster ordering before the order is rebuilt.
        min_queries: fewer queries per call (decode steps) are searched exactly.
        kernel: how exact search runs (inner products): "torch" (a matrix product, then a top-k: the
            reference), "triton" (`memlm.store.fused_topk`: one pass over the keys, no score matrix;
            CUDA, or Triton's interpreter on a CPU for tests), or "auto" (triton on a CUDA device where
            Triton is installed, else torch).
    """

    search: str = "exact"
    page_size: int = 32
    probe_pages: int = 64
    exact_below: int = 8192
    min_queries: int = 32
    kernel: str = "torch"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ClusterSearch:
        """Pop the search options out of a backend's options (the rest go to the index)."""
        picked = {name: options.pop(name) for name in SEARCH_OPTIONS if name in options}
        search = cls(**picked)
        if search.search not in SEARCH_MODES:
            raise ConfigError(f"backend_options search must be one of {SEARCH_MODES}, got {search.search!r}")
        if search.kernel not in SEARCH_KERNELS:
            raise ConfigError(f"backend_options kernel must be one of {SEARCH_KERNELS}, got {search.kernel!r}")
        for name in ("page_size", "probe_pages", "exact_below", "min_queries"):
            value = getattr(search, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"backend_options {name} must be a positive integer, got {value!r}")
        return search

    def applies(self, items: int, queries: int) -> bool:
        return self.search == "clusters" and items > self.exact_below and queries >= self.min_queries


def kmeans(points: torch.Tensor, clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Batched Lloyd k-means: points (heads, n, dim) -> centroids (heads, clusters, dim), float32.
    Seeded from a random subset of the points; an emptied cluster keeps its previous centroid."""
    heads, count, _ = points.shape
    points = points.float()
    start = torch.randperm(count, generator=generator)[:clusters].to(points.device)
    centroids = points[:, start].clone()
    for _ in range(iterations):
        nearest = assign(points, centroids)  # (heads, n)
        sums = torch.zeros_like(centroids).scatter_add_(1, nearest.unsqueeze(-1).expand_as(points), points)
        counts = torch.zeros(heads, clusters, device=points.device).scatter_add_(
            1, nearest, torch.ones_like(nearest, dtype=torch.float32))
        centroids = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp(min=1).unsqueeze(-1), centroids)
    return centroids


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid (L2) of each point: argmax of p.c - |c|^2 / 2, chunked. (heads, n) int64."""
    half_norms = centroids.float().pow(2).sum(-1).unsqueeze(1) / 2  # (heads, 1, clusters)
    chunk = max(1, GATHER_BUDGET // (points.shape[0] * centroids.shape[1]))
    parts = [(torch.matmul(points[:, first: first + chunk].float(), centroids.float().transpose(1, 2))
              - half_norms).argmax(-1) for first in range(0, points.shape[1], chunk)]
    return torch.cat(parts, dim=1)


class ClusterIndex:
    """The derived cluster state of one group's (heads, N, dim) key table, kept up to date lazily."""

    def __init__(self, search: ClusterSearch):
        self.search = search
        self.generator = torch.Generator().manual_seed(0)
        self.invalidate()

    def invalidate(self) -> None:
        """After a removal positions shift: everything is rebuilt at the next search."""
        self.centroids: torch.Tensor | None = None
        self.trained_at = 0  # items when the centroids were trained
        self.assignments: torch.Tensor | None = None  # (heads, assigned) cluster of each key
        self.order: torch.Tensor | None = None  # (heads, pages * page_size) positions by cluster, padded
        self.means: torch.Tensor | None = None  # (heads, pages, dim) mean key of each page
        self.ordered = 0  # items covered by `order`

    def refresh(self, keys: torch.Tensor) -> None:
        """Bring the state up to date with `keys` (heads, N, dim), which only grew since the last call."""
        heads, count, _ = keys.shape
        if self.centroids is None or count >= 4 * self.trained_at:
            sample = torch.randperm(count, generator=self.generator)[:TRAIN_SAMPLE].to(keys.device)
            clusters = min(count, max(16, min(MAX_CLUSTERS, count // (PAGES_PER_CLUSTER * self.search.page_size))))
            self.centroids = kmeans(keys[:, sample], clusters, TRAIN_ITERATIONS, self.generator)
            self.trained_at, self.assignments, self.ordered = count, None, 0
        assigned = 0 if self.assignments is None else self.assignments.shape[1]
        if assigned < count:
            new = assign(keys[:, assigned:count], self.centroids)
            self.assignments = new if self.assignments is None else torch.cat([self.assignments, new], dim=1)
        if count - self.ordered > self.search.exact_below or self.order is None:
            self._reorder(keys)

    def _reorder(self, keys: torch.Tensor) -> None:
        heads, count, dim = keys.shape
        size = self.search.page_size
        order = torch.sort(self.assignments, dim=1, stable=True).indices  # (heads, N), cluster by cluster
        pages = -(-count // size)
        padding = pages * size - count
        members = torch.gather(keys, 1, order.unsqueeze(-1).expand(-1, -1, dim)).float()
        if padding:  # the last page is partial: its mean is over its real keys only
            members = torch.cat([members, members.new_zeros(heads, padding, dim)], dim=1)
            order = torch.cat([order, order.new_full((heads, padding), -1)], dim=1)
        real = (order >= 0).float().view(heads, pages, size).sum(-1, keepdim=True)
        self.means = (members.view(heads, pages, size, dim).sum(2) / real).to(keys.dtype)
        self.order, self.ordered = order, count


ExactSearch = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def cluster_search(index: ClusterIndex, table: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor,
                   k: int, limit: int, exact: ExactSearch) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each query among the first `limit` items through cluster-ordered pages.

    table: the contiguous (heads, capacity, dim) storage behind `keys` (heads, N, dim), so candidate
    rows are one index_select; queries (heads, Q, dim) in the keys' dtype; exact(queries, keys, take)
    searches a slice exactly (the tail appended since the last ordering). Returns scores (heads, Q, k)
    float32 and positions (heads, Q, k) int64, best first (-inf where fewer were found)."""
    index.refresh(keys)
    heads, count, dim = queries.shape
    size = index.search.page_size
    pages = index.means.shape[1]
    probe = min(index.search.probe_pages, pages)
    capacity = table.shape[1]
    offsets = torch.arange(0, heads * capacity, capacity, device=table.device).view(-1, 1, 1)
    flat = table.view(heads * capacity, dim)
    page_offsets = torch.arange(size, device=table.device)
    take = min(k, probe * size)
    chunk = max(1, GATHER_BUDGET // (heads * probe * size * dim))
    score_parts, position_parts = [], []
    for first in range(0, count, chunk):
        part = queries[:, first: first + chunk]
        chosen = torch.matmul(part, index.means.transpose(1, 2)).topk(probe, dim=-1).indices  # (H, q, probe)
        slots = (chosen.unsqueeze(-1) * size + page_offsets).flatten(-2)  # (H, q, probe * size)
        positions = torch.gather(index.order.unsqueeze(1).expand(-1, slots.shape[1], -1), 2, slots)
        invalid = (positions < 0) | (positions >= limit)
        rows = flat.index_select(0, (positions.clamp(min=0, max=capacity - 1) + offsets).flatten())
        candidate_keys = rows.view(*positions.shape, dim)  # (H, q, C, dim)
        scores = torch.matmul(candidate_keys, part.unsqueeze(-1)).squeeze(-1).float().masked_fill(invalid, -math.inf)
        top_scores, top = scores.topk(take, dim=-1)
        score_parts.append(top_scores)
        position_parts.append(positions.gather(-1, top))
    scores = torch.cat(score_parts, dim=1)
    positions = torch.cat(position_parts, dim=1)
    if index.ordered < limit:  # keys appended since the ordering: exact, then merged
        tail_scores, tail_positions = exact(queries, keys[:, index.ordered:limit], min(k, limit - index.ordered))
        scores = torch.cat([scores, tail_scores.float()], dim=-1)
        positions = torch.cat([positions, tail_positions + index.ordered], dim=-1)
        scores, best = scores.topk(min(k, scores.shape[-1]), dim=-1)
        positions = positions.gather(-1, best)
    return scores, positions.masked_fill(torch.isinf(scores), 0)
