"""One memory group of a `KeyValueStore`: the vectors of one (kind, batch row, layer), searched on
the device (torch backend: all KV heads as one tensor, exact or cluster search) or by one FAISS index
per head; its values, ids, hit counts and origins; and the layout types that size it."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError
from memlm.store.clusters import ClusterIndex, ClusterSearch, cluster_search
from memlm.store.fused_topk import fused_topk, runs_on, triton_importable
from memlm.store.index import GrowableHeads, GrowableRows, VectorIndex, exact_topk, index_from_arrays, make_index

KV_EVICTION_POLICIES = ("oldest", "least_used")
_VERSIONS = itertools.count(1)


@dataclass(frozen=True)
class GroupSpec:
    """Shape of the groups of one kind: `value_dim=None` means values are token ids."""

    heads: int
    key_dim: int
    value_dim: int | None
    metric: str = "ip"


@dataclass
class StoreLayout:
    specs: dict[str, GroupSpec]
    backend: str = "torch"
    backend_options: dict[str, Any] = field(default_factory=dict)
    capacity: int | None = None
    eviction: str = "oldest"

    def validate(self) -> None:
        if self.eviction not in KV_EVICTION_POLICIES:
            raise ConfigError(f"eviction must be one of {KV_EVICTION_POLICIES}, got {self.eviction!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ConfigError(f"capacity must be a positive integer or None, got {self.capacity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "specs": {kind: asdict(spec) for kind, spec in self.specs.items()}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StoreLayout:
        specs = {kind: GroupSpec(**spec) for kind, spec in values["specs"].items()}
        return cls(**{**values, "specs": specs})


class SearchResult(NamedTuple):
    """Top-k of each query: scores (H, Q, k) with -inf where nothing was found, values
    (H, Q, k, value_dim) or token ids (H, Q, k), valid (H, Q, k), origins (H, Q, k, 2), ids (H, Q, k)."""

    scores: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    origins: torch.Tensor
    ids: torch.Tensor


class Candidates(NamedTuple):
    """Top-k of each query as positions in its group (`MemoryGroup.search_positions`): scores
    (H, Q, k) float32, -inf where nothing was found; positions (H, Q, k) int64, 0 where nothing was."""

    scores: torch.Tensor
    positions: torch.Tensor


SCORE_BUDGET = 1 << 30  # bytes of one (heads, queries, items) score matrix (4x on GPUs); queries are chunked above it


class MemoryGroup:
    """The vectors of one (kind, row, layer): keys per head, shared ids, values, use counts.

    With the `torch` backend the keys of all heads are one (heads, N, key_dim) tensor on the store's
    device (in the search dtype), searched by one batched product and a top-k, values are one
    (heads, N, value_dim) tensor gathered by position: a search is a handful of kernels, without
    host round trips. FAISS backends keep one index per head, searched head by head."""

    def __init__(self, spec: GroupSpec, layout: StoreLayout, device: torch.device, dtype: torch.dtype):
        self.spec = spec
        self.backend = layout.backend
        self.count_hits = layout.eviction == "least_used"
        options = _index_options(layout, device, dtype)
        self.indexes: list[VectorIndex] = []
        if self.backend == "torch":
            self._keys = GrowableHeads(spec.heads, (spec.key_dim,), device, options["dtype"])
            self._norms = GrowableHeads(spec.heads, (), device, torch.float32) if spec.metric == "l2" else None
            # Cluster search ranks inner products only: L2 groups (kNN-LM) stay exact.
            self._clusters = ClusterIndex(options["search"]) if spec.metric == "ip" else None
            self._fused = spec.metric == "ip" and _fused_kernel(options["search"].kernel, device)
        else:
            self.indexes = [make_index(layout.backend, spec.key_dim, spec.metric, **options)
                            for _ in range(spec.heads)]
        self._ids = GrowableRows((), device, torch.int64)  # ascending: ids are allocated in order
        self._values: GrowableRows | GrowableHeads = (
            GrowableRows((), device, torch.int64) if spec.value_dim is None
            else GrowableHeads(spec.heads, (spec.value_dim,), device, dtype))
        self._hits = GrowableRows((), device, torch.int64)
        self._origins = GrowableRows((2,), device, torch.int64)  # (sequence, position) of each item
        self._runs: list[list[int]] = []  # [sequence, count] of consecutive items, oldest first (on the host)
        self._offsets: tuple[int, torch.Tensor] | None = None  # (capacity, first row of each head)
        self.version = next(_VERSIONS)  # renewed by every change: readers cache what they derive from it

    def __len__(self) -> int:
        return self._ids.size

    @property
    def ids(self) -> torch.Tensor:
        return self._ids.data

    @property
    def keys(self) -> torch.Tensor:
        """The searched keys, (heads, N, key_dim) (torch backend)."""
        return self._keys.data

    @property
    def values(self) -> torch.Tensor:
        """(heads, N, value_dim), or (N,) token ids."""
        return self._values.data

    @property
    def origins(self) -> torch.Tensor:
        return self._origins.data

    def add(self, ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, origins: torch.Tensor,
            heads_first: bool = False) -> None:
        """ids (N,), keys (N, heads, key_dim), values (N, heads, value_dim) or (N,) token ids,
        origins (N, 2) on the host: the (sequence, position) each item came from. With `heads_first`
        keys and values come as (heads, N, ...)."""
        head_axis = 0 if heads_first else 1
        if keys.dim() != 3 or keys.shape[head_axis] != self.spec.heads or keys.shape[2] != self.spec.key_dim:
            raise IncompatibleMemoryError(
                f"keys of shape {tuple(keys.shape)} do not fit heads={self.spec.heads}, width={self.spec.key_dim}")
        per_head = keys if heads_first else keys.transpose(0, 1)
        if self.backend == "torch":
            self._keys.append(per_head)
            if self._norms is not None:  # taken before the keys are stored in a lower precision
                self._norms.append(per_head.float().pow(2).sum(-1))
        else:
            for head, index in enumerate(self.indexes):
                index.add(per_head[head], ids)
        self._ids.append(ids)
        if self.spec.value_dim is None:
            self._values.append(values)
        else:
            self._values.append(values if heads_first else values.transpose(0, 1))
        self._hits.append(torch.zeros_like(ids))
        origins = origins.cpu()
        self._origins.append(origins)
        sequences, counts = torch.unique_consecutive(origins[:, 0], return_counts=True)
        for sequence, count in zip(sequences.tolist(), counts.tolist(), strict=True):
            _extend_runs(self._runs, sequence, count)
        self.version = next(_VERSIONS)

    def latest_count(self, sequence: int, limit: int) -> int:
        """How many of the latest `limit` items come from `sequence` and are newer than every item of
        another sequence (known on the host: no device round trip)."""
        if not self._runs or self._runs[-1][0] != sequence:
            return 0
        return min(limit, self._runs[-1][1])

    def search_positions(self, queries: torch.Tensor, k: int, limit: int | None = None) -> Candidates:
        """queries (heads, Q, key_dim) -> the top-k of each query in its head's keys, among the first
        `limit` items (all of them when None), as positions in this group; best first."""
        limit = len(self) if limit is None else min(limit, len(self))
        heads, count = queries.shape[0], queries.shape[1]
        device = self._ids.data.device
        take = min(k, limit)
        if take == 0:
            return Candidates(torch.full((heads, count, k), -math.inf, device=device),
                              torch.zeros(heads, count, k, dtype=torch.int64, device=device))
        if self.backend != "torch":
            result = self._search_faiss(queries, k, None if limit >= len(self) else int(self.ids[limit]))
            return Candidates(result[0], result[1])
        keys = self._keys.data[:, :limit]
        queries = queries.to(device, keys.dtype)
        if self._clusters is not None and self._clusters.search.applies(limit, count):
            scores, positions = cluster_search(self._clusters, self._keys._data, self._keys.data, queries, k, limit,
                                               self._exact_search)
        else:
            scores, positions = self._exact_search(queries, keys, take)
        return self._finish_search(scores, positions, k)

    def _exact_search(self, queries: torch.Tensor, keys: torch.Tensor, take: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`take` of each query (H, Q, dim) over `keys` (H, N, dim), the group's first N items:
        scores (H, Q, take) float32 and positions, best first; queries chunked to bound the scores."""
        if self._fused:  # one pass over the keys, no (H, q, N) scores (memlm.store.fused_topk)
            return fused_topk(queries, keys, take)
        heads, count, limit = queries.shape[0], queries.shape[1], keys.shape[1]
        budget = SCORE_BUDGET * (4 if keys.device.type == "cuda" else 1)
        chunk = max(1, budget // (heads * limit * max(keys.element_size(), 4 if self._norms is not None else 2)))
        parts = []
        for first in range(0, count, chunk):
            part = queries[:, first: first + chunk]
            similarity = _similarity(part, keys)  # (H, q, N)
            if self._norms is not None:  # -|q - v|^2 = 2 q.v - |q|^2 - |v|^2, in float32
                similarity = (2 * similarity.float() - part.float().pow(2).sum(-1, keepdim=True)
                              - self._norms.data[:, None, :limit])
            parts.append(exact_topk(similarity, take))
        scores = torch.cat([part[0] for part in parts], dim=1) if len(parts) > 1 else parts[0][0]
        positions = torch.cat([part[1] for part in parts], dim=1) if len(parts) > 1 else parts[0][1]
        return scores.float(), positions

    def _finish_search(self, scores: torch.Tensor, positions: torch.Tensor, k: int) -> Candidates:
        """Pad (H, Q, take <= k) results to k columns and count the hits."""
        heads, count, take = scores.shape
        if take < k:
            scores = torch.cat([scores, scores.new_full((heads, count, k - take), -math.inf)], dim=-1)
            positions = torch.cat([positions, positions.new_zeros(heads, count, k - take)], dim=-1)
        if self.count_hits:
            self._hits.data.index_add_(0, positions.flatten(), torch.isfinite(scores).flatten().long())
        return Candidates(scores, positions)

    def _search_faiss(self, queries: torch.Tensor, k: int, below_id: int | None) -> tuple[torch.Tensor, ...]:
        device = self._ids.data.device
        excluded = 0 if below_id is None else int((self.ids >= below_id).sum())
        scores, found = zip(*(index.search(queries[head], k + excluded) for head, index in enumerate(self.indexes)),
                            strict=True)
        scores = torch.stack(scores).to(device)  # (H, Q, k + excluded)
        found = torch.stack(found).to(device)
        if excluded:  # drop the excluded ids, keep the best k of the rest (still best first)
            scores, best = scores.masked_fill(found >= below_id, float("-inf")).topk(k, dim=-1)
            found = found.gather(-1, best).masked_fill(torch.isinf(scores), -1)
        valid = found >= 0
        positions = torch.searchsorted(self.ids, found.clamp(min=0)).clamp(max=max(len(self) - 1, 0))
        valid &= self.ids[positions] == found  # guards against ids an ANN index still returns after removal
        positions = positions.masked_fill(~valid, 0)
        if self.count_hits:
            self._hits.data.index_add_(0, positions.flatten(), valid.flatten().long())
        return scores.masked_fill(~valid, float("-inf")), positions

    def gather_values(self, positions: torch.Tensor) -> torch.Tensor:
        """Values at `positions` (H, Q, k) of each head: (H, Q, k, value_dim), or token ids (H, Q, k)."""
        if self.spec.value_dim is None:
            return self._values.data[positions]
        table = self._values._data  # (H, capacity, value_dim), contiguous: one index_select of flat rows
        heads, capacity, width = table.shape
        if capacity == 0:  # nothing stored yet: every slot is empty
            return table.new_zeros(*positions.shape, width)
        if self._offsets is None or self._offsets[0] != capacity:
            self._offsets = (capacity, torch.arange(0, heads * capacity, capacity, device=table.device).view(-1, 1, 1))
        flat = table.view(heads * capacity, width).index_select(0, (positions + self._offsets[1]).flatten())
        return flat.view(*positions.shape, width)

    def search(self, queries: torch.Tensor, k: int, below_id: int | None = None) -> SearchResult:
        """queries (heads, Q, key_dim) -> top-k of each query in its head's keys, with values and
        origins; with `below_id`, among items with smaller ids only."""
        limit = None if below_id is None else int(torch.searchsorted(self.ids, torch.tensor(below_id,
                                                                                            device=self.ids.device)))
        scores, positions = self.search_positions(queries, k, limit)
        valid = torch.isfinite(scores)
        values = self.gather_values(positions)
        values = torch.where(valid, values, 0) if self.spec.value_dim is None else values * valid.unsqueeze(-1)
        found = self.ids[positions].masked_fill(~valid, -1) if len(self) else positions.fill_(-1)
        origins = self._origins.data[positions] if len(self) else positions.new_zeros(*positions.shape, 2)
        return SearchResult(scores, values, valid, origins, found)

    def latest(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `count` most recently added items: ids (n,), values (heads, n, ...) or (n,), origins (n, 2)."""
        first = max(0, len(self) - count)
        values = self._values.data[first:] if self.spec.value_dim is None else self._values.data[:, first:]
        return self.ids[first:], values, self._origins.data[first:]

    def remove(self, ids: torch.Tensor) -> int:
        keep = ~torch.isin(self.ids, ids.to(self.ids.device))
        removed = len(self) - int(keep.sum())
        if removed:
            if self.backend == "torch":
                self._keys.keep(keep)
                if self._norms is not None:
                    self._norms.keep(keep)
                if self._clusters is not None:
                    self._clusters.invalidate()
            else:
                for index in self.indexes:
                    index.remove(ids)
            # What each run of one sequence keeps: the running count of kept items at its ends.
            ends = torch.tensor([count for _, count in self._runs], dtype=torch.int64).cumsum(0)
            kept_before = torch.cat([torch.zeros(1, dtype=torch.int64), keep.long().cumsum(0).cpu()])[ends]
            kept = torch.diff(kept_before, prepend=torch.zeros(1, dtype=torch.int64)).tolist()
            runs: list[list[int]] = []
            for (sequence, _), n in zip(self._runs, kept, strict=True):
                if n:  # two runs of one sequence join where the other sequence between them is gone
                    _extend_runs(runs, sequence, n)
            self._runs = runs
            for rows in (self._ids, self._values, self._hits, self._origins):
                rows.keep(keep)
            self.version = next(_VERSIONS)
        return removed

    def eviction_candidates(self, count: int, policy: str) -> torch.Tensor:
        # Copies, not views: removing compacts the id buffer in place.
        if policy == "oldest":
            return self.ids[:count].clone()
        # Least used first; among equals the oldest (a stable sort keeps id order).
        order = torch.sort(self._hits.data, stable=True).indices
        return self.ids[order[:count]].clone()

    def to_arrays(self, prefix: str) -> dict[str, torch.Tensor]:
        values = self._values.data if self.spec.value_dim is None else self._values.data.transpose(0, 1)
        arrays = {f"{prefix}.ids": self.ids.cpu(), f"{prefix}.values": values.contiguous().cpu(),
                  f"{prefix}.hits": self._hits.data.cpu(), f"{prefix}.origins": self._origins.data.cpu()}
        if self.backend == "torch":  # the format `TorchIndex.to_arrays` writes, one index per head
            for head in range(self.spec.heads):
                arrays[f"{prefix}.h{head}.vectors"] = self._keys.data[head].to("cpu", torch.float32).contiguous()
                arrays[f"{prefix}.h{head}.ids"] = self.ids.cpu().clone()
                if self._norms is not None:
                    arrays[f"{prefix}.h{head}.squared_norms"] = self._norms.data[head].cpu().contiguous()
            return arrays
        for head, index in enumerate(self.indexes):
            for name, array in index.to_arrays().items():
                arrays[f"{prefix}.h{head}.{name}"] = torch.from_numpy(np.ascontiguousarray(array))
        return arrays

    @classmethod
    def from_arrays(cls, spec: GroupSpec, layout: StoreLayout, arrays: dict[str, torch.Tensor], prefix: str,
                    device: torch.device, dtype: torch.dtype) -> MemoryGroup:
        group = cls(spec, layout, device, dtype)
        try:
            ids, values = arrays[f"{prefix}.ids"], arrays[f"{prefix}.values"]
            hits, origins = arrays[f"{prefix}.hits"], arrays[f"{prefix}.origins"]
            if group.backend == "torch":
                head_ids = [arrays[f"{prefix}.h{head}.ids"] for head in range(spec.heads)]
                vectors = [arrays[f"{prefix}.h{head}.vectors"] for head in range(spec.heads)]
                norms = [arrays.get(f"{prefix}.h{head}.squared_norms") for head in range(spec.heads)]
        except KeyError as error:
            raise CorruptedFileError(f"saved memory group {prefix} lacks {error}") from None
        if group.backend == "torch":
            if any(not torch.equal(head, ids) for head in head_ids) or any(v.shape[0] != len(ids) for v in vectors):
                raise CorruptedFileError(f"saved memory group {prefix}: index sizes do not match its ids")
            keys = torch.stack(vectors)
            group._keys.append(keys)
            if group._norms is not None:
                group._norms.append(torch.stack(norms) if all(n is not None for n in norms)
                                    else keys.float().pow(2).sum(-1))
        else:
            options = _index_options(layout, device, dtype)
            for head in range(spec.heads):
                head_prefix = f"{prefix}.h{head}."
                head_arrays = {name[len(head_prefix):]: tensor.numpy() for name, tensor in arrays.items()
                               if name.startswith(head_prefix)}
                group.indexes[head] = index_from_arrays(layout.backend, spec.key_dim, spec.metric, options,
                                                        head_arrays)
            if any(len(index) != len(ids) for index in group.indexes):
                raise CorruptedFileError(f"saved memory group {prefix}: index sizes do not match its ids")
        if spec.value_dim is not None and (values.dim() != 3 or values.shape[:2] != (len(ids), spec.heads)):
            raise CorruptedFileError(f"saved memory group {prefix}: values of shape {tuple(values.shape)}")
        group._ids.append(ids)
        group._values.append(values if spec.value_dim is None else values.transpose(0, 1))
        group._hits.append(hits)
        group._origins.append(origins)
        if len(ids):
            sequences, counts = torch.unique_consecutive(origins[:, 0], return_counts=True)
            group._runs = [[s, n] for s, n in zip(sequences.tolist(), counts.tolist(), strict=True)]
        return group


def _extend_runs(runs: list[list[int]], sequence: int, count: int) -> None:
    """Add `count` items of `sequence` after `runs` ([sequence, count] pairs, oldest first)."""
    if runs and runs[-1][0] == sequence:
        runs[-1][1] += count
    else:
        runs.append([sequence, count])


def _similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries (H, Q, D) . keys (H, N, D) -> (H, Q, N). On GPUs one batched product. CPUs have no
    fast batched bf16 product: a plain one per head there, and for a few queries (decode steps)
    keys @ queries.T, which streams the keys once instead of once per query."""
    if keys.device.type != "cpu":
        return torch.matmul(queries, keys.transpose(1, 2))
    if queries.shape[1] <= 16:
        return torch.stack([keys[head] @ queries[head].T for head in range(keys.shape[0])]).transpose(1, 2)
    if keys.shape[0] == 1:
        return (queries[0] @ keys[0].T).unsqueeze(0)
    return torch.stack([queries[head] @ keys[head].T for head in range(keys.shape[0])])


def _fused_kernel(kernel: str, device: torch.device) -> bool:
    """Whether exact search runs the fused Triton kernel: "auto" on CUDA with Triton, "triton" or an error."""
    device = torch.device(device)
    if kernel == "auto":  # Triton's interpreter (CPU) only when asked for by name: it is for tests
        return device.type == "cuda" and triton_importable()
    if kernel == "torch":
        return False
    if not runs_on(device):
        raise ConfigError(f"backend_options kernel='triton' needs a CUDA device and Triton installed (here: "
                          f"{device}, Triton {'installed' if triton_importable() else 'missing'}); "
                          "kernel='auto' falls back to torch's matrix product")
    return True


def _index_options(layout: StoreLayout, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Index constructor options; the torch backend lives on the store's device, in the store's
    dtype unless `backend_options["dtype"]` names another (e.g. "bfloat16": half the bytes to read
    per query, and CPUs with bf16 units multiply it several times faster)."""
    options = dict(layout.backend_options)
    search_dtype = options.pop("dtype", None)  # FAISS always searches float32
    search = ClusterSearch.from_options(options)  # how the torch backend searches large stores (clusters.py)
    if layout.backend == "torch":
        options.update(device=device, dtype=getattr(torch, search_dtype) if search_dtype else dtype, search=search)
    return options
