"""Vector indexes: one interface, several backends.

* `torch`: exact search (matrix product + top-k) on CPU or GPU, in the model's dtype; the reference.
* `faiss-flat`: exact FAISS search (`IndexIDMap2(IndexFlat*)`).
* `faiss-ivf`: inverted lists, approximate (`nprobe` lists searched), optional product
  quantisation; it trains itself once it holds enough vectors.
* `faiss-hnsw`: HNSW graph, approximate (`ef_search`). FAISS HNSW cannot delete, so removed ids
  become tombstones that searches skip, and the graph is rebuilt when they pile up.

Every index stores external int64 ids and returns them from `search` with a similarity score
(higher is better: the inner product for `metric="ip"`, minus the squared distance for `"l2"`).
Missing results (fewer than k vectors) come back as id -1 and score -inf. `to_arrays()` and
`from_arrays()` turn an index into named numpy arrays (FAISS indexes through `serialize_index`),
which `memlm.serialization` stores as checksummed safetensors — no pickle anywhere.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError

METRICS = ("ip", "l2")
BACKENDS = ("torch", "faiss-flat", "faiss-ivf", "faiss-hnsw")


def _as_float32_numpy(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _as_ids(ids: torch.Tensor | np.ndarray | list[int]) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


class VectorIndex(ABC):
    """Add, search top-k, remove by id; `len()` is the number of live vectors."""

    backend: ClassVar[str] = ""

    def __init__(self, dim: int, metric: str = "ip"):
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.metric = metric

    def _check_dim(self, vectors: torch.Tensor | np.ndarray, what: str) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IncompatibleMemoryError(
                f"{what} have shape {tuple(vectors.shape)}; this index holds vectors of width {self.dim}")

    @abstractmethod
    def add(self, vectors: torch.Tensor | np.ndarray, ids: torch.Tensor | np.ndarray) -> None: ...

    @abstractmethod
    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores, ids), each (Q, k); scores as float32, ids as int64 (-1 where missing)."""

    @abstractmethod
    def remove(self, ids: torch.Tensor | np.ndarray | list[int]) -> int:
        """Remove the given ids (unknown ids are ignored); return how many were removed."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def to_arrays(self) -> dict[str, np.ndarray]: ...

    @classmethod
    @abstractmethod
    def from_arrays(cls, dim: int, metric: str, options: dict[str, Any], arrays: dict[str, np.ndarray]
                    ) -> VectorIndex: ...

    def options(self) -> dict[str, Any]:
        """Constructor options to record next to the arrays."""
        return {}


# --- exact torch search ----------------------------------------------------------------------

class GrowableRows:
    """A tensor that grows along its first dimension with amortised O(1) appends."""

    def __init__(self, row_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self._data = torch.empty(0, *row_shape, device=device, dtype=dtype)
        self.size = 0

    @property
    def data(self) -> torch.Tensor:
        return self._data[: self.size]

    def append(self, rows: torch.Tensor) -> None:
        needed = self.size + rows.shape[0]
        if needed > self._data.shape[0]:
            grown = torch.empty(max(needed, 2 * self._data.shape[0], 64), *self._data.shape[1:],
                                device=self._data.device, dtype=self._data.dtype)
            grown[: self.size] = self.data
            self._data = grown
        self._data[self.size: needed] = rows.to(self._data.device, self._data.dtype)
        self.size = needed

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the rows where `mask` is true (in order)."""
        kept = self.data[mask].clone()
        self.size = 0
        self.append(kept)


class GrowableHeads:
    """A (heads, N, ...) tensor that grows along N with amortised O(1) appends: each head's rows stay
    contiguous, so one batched matrix product searches every head at once."""

    def __init__(self, heads: int, row_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self._data = torch.empty(heads, 0, *row_shape, device=device, dtype=dtype)
        self.size = 0

    @property
    def data(self) -> torch.Tensor:
        return self._data[:, : self.size]

    def append(self, rows: torch.Tensor) -> None:
        """rows (heads, n, ...)."""
        needed = self.size + rows.shape[1]
        if needed > self._data.shape[1]:
            capacity = max(needed, 2 * self._data.shape[1], 1024)
            capacity = 1 << (capacity - 1).bit_length()  # powers of two: 1,048,576 items fit exactly
            grown = torch.empty(self._data.shape[0], capacity, *self._data.shape[2:], device=self._data.device,
                                dtype=self._data.dtype)
            grown[:, : self.size] = self.data
            self._data = grown
        self._data[:, self.size: needed] = rows.to(self._data.device, self._data.dtype)
        self.size = needed

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the positions where `mask` (N,) is true (in order)."""
        kept = self.data[:, mask].clone()
        self.size = 0
        self.append(kept)


TOPK_CHUNK = 4096  # scores longer than this are reduced in two stages (see `exact_topk`)


def exact_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores.topk(k, dim=-1)` (values sorted, best first) for long rows, in two stages: the best k
    of each block of TOPK_CHUNK, then the best k of those. One pass over the scores instead of the
    many passes a radix select makes over a long row; the result is the same set."""
    length = scores.shape[-1]
    k = min(k, length)
    if length <= 4 * TOPK_CHUNK or k > TOPK_CHUNK // 4:
        return scores.topk(k, dim=-1)
    blocks = length // TOPK_CHUNK
    body = scores[..., : blocks * TOPK_CHUNK].unflatten(-1, (blocks, TOPK_CHUNK))
    block_scores, block_positions = body.topk(k, dim=-1)  # (..., blocks, k)
    offsets = torch.arange(0, blocks * TOPK_CHUNK, TOPK_CHUNK, device=scores.device).unsqueeze(-1)
    candidates, positions = block_scores.flatten(-2), (block_positions + offsets).flatten(-2)
    if blocks * TOPK_CHUNK < length:  # the tail block
        tail = scores[..., blocks * TOPK_CHUNK:]
        tail_scores, tail_positions = tail.topk(min(k, tail.shape[-1]), dim=-1)
        candidates = torch.cat([candidates, tail_scores], dim=-1)
        positions = torch.cat([positions, tail_positions + blocks * TOPK_CHUNK], dim=-1)
    best_scores, best = candidates.topk(k, dim=-1)
    return best_scores, positions.gather(-1, best)


class TorchIndex(VectorIndex):
    """Exact search with a matrix product on CPU or GPU; vectors kept in `dtype` on `device`."""

    backend = "torch"

    def __init__(self, dim: int, metric: str = "ip", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, query_chunk: int = 1024):
        super().__init__(dim, metric)
        self.device = torch.device(device)
        self.dtype = dtype
        self.query_chunk = query_chunk
        self._vectors = GrowableRows((dim,), self.device, dtype)
        self._ids = GrowableRows((), self.device, torch.int64)
        self._squared_norms = GrowableRows((), self.device, torch.float32)  # L2 only: kept, not recomputed

    def __len__(self) -> int:
        return self._ids.size

    @property
    def vectors(self) -> torch.Tensor:
        return self._vectors.data

    @property
    def ids(self) -> torch.Tensor:
        return self._ids.data

    def add(self, vectors: torch.Tensor | np.ndarray, ids: torch.Tensor | np.ndarray) -> None:
        self._check_dim(vectors, "vectors")
        vectors = torch.as_tensor(vectors)
        ids = torch.as_tensor(_as_ids(ids))
        if ids.shape[0] != vectors.shape[0]:
            raise ConfigError(f"{vectors.shape[0]} vectors but {ids.shape[0]} ids")
        self._vectors.append(vectors)
        self._ids.append(ids)
        if self.metric == "l2":
            self._squared_norms.append(vectors.float().pow(2).sum(-1))

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Similarity of each query to every stored vector: (Q, N)."""
        vectors = self.vectors
        similarity = (queries @ vectors.T).float()  # (Q, N)
        if self.metric == "l2":  # -|q - v|^2 = 2 q.v - |q|^2 - |v|^2, in float32
            similarity = 2 * similarity - queries.float().pow(2).sum(-1, keepdim=True) - self._squared_norms.data
        return similarity

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_dim(queries, "queries")
        queries = torch.as_tensor(queries).to(self.device, self.dtype)
        count = queries.shape[0]
        scores = torch.full((count, k), -math.inf, device=self.device, dtype=torch.float32)
        found = torch.full((count, k), -1, device=self.device, dtype=torch.int64)
        take = min(k, len(self))
        if take == 0:
            return scores, found
        for start in range(0, count, self.query_chunk):  # bounds the (Q, N) score matrix
            chunk = slice(start, start + self.query_chunk)
            top_scores, top_positions = self.scores(queries[chunk]).topk(take, dim=-1)
            scores[chunk, :take] = top_scores.float()
            found[chunk, :take] = self.ids[top_positions]
        return scores, found

    def remove(self, ids: torch.Tensor | np.ndarray | list[int]) -> int:
        keep = ~torch.isin(self.ids, torch.as_tensor(_as_ids(ids), device=self.device))
        removed = len(self) - int(keep.sum())
        if removed:
            self._vectors.keep(keep)
            self._ids.keep(keep)
            if self.metric == "l2":
                self._squared_norms.keep(keep)
        return removed

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"vectors": _as_float32_numpy(self.vectors), "ids": self.ids.cpu().numpy()}
        if self.metric == "l2":
            # Norms are taken before the vectors are stored in a lower precision: recomputing them from
            # the stored vectors after a reload would shift every L2 score slightly.
            arrays["squared_norms"] = _as_float32_numpy(self._squared_norms.data)
        return arrays

    @classmethod
    def from_arrays(cls, dim, metric, options, arrays):
        index = cls(dim, metric, **options)
        index.add(arrays["vectors"], arrays["ids"])
        if metric == "l2" and "squared_norms" in arrays:
            norms = torch.as_tensor(np.asarray(arrays["squared_norms"], dtype=np.float32)).to(index.device)
            if norms.shape != (len(index),):
                raise CorruptedFileError(f"saved squared norms have shape {tuple(norms.shape)}, "
                                         f"expected ({len(index)},)")
            index._squared_norms = GrowableRows((), index.device, torch.float32)
            index._squared_norms.append(norms)
        return index


# --- FAISS ------------------------------------------------------------------------------------

def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ConfigError("FAISS backends need the faiss-cpu package: pip install faiss-cpu") from error
    return faiss


class FaissIndex(VectorIndex):
    """Shared code of the FAISS backends: id handling, search post-processing, (de)serialisation."""

    def __init__(self, dim: int, metric: str = "ip"):
        super().__init__(dim, metric)
        self.faiss = _faiss()
        self.faiss_metric = self.faiss.METRIC_INNER_PRODUCT if metric == "ip" else self.faiss.METRIC_L2
        self.index = self._build()

    @abstractmethod
    def _build(self) -> Any: ...

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors, ids) -> None:
        self._check_dim(vectors, "vectors")
        vectors, ids = _as_float32_numpy(vectors), _as_ids(ids)
        if ids.shape[0] != vectors.shape[0]:
            raise ConfigError(f"{vectors.shape[0]} vectors but {ids.shape[0]} ids")
        if len(ids):
            self.index.add_with_ids(vectors, ids)

    def _finish(self, distances: np.ndarray, found: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.from_numpy(np.ascontiguousarray(distances, dtype=np.float32))
        if self.metric == "l2":
            scores = -scores  # FAISS returns squared distances for L2
        found = torch.from_numpy(np.ascontiguousarray(found, dtype=np.int64))
        scores[found < 0] = -math.inf
        return scores[:, :k], found[:, :k]

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_dim(queries, "queries")
        queries = _as_float32_numpy(queries)
        if len(self) == 0:
            return (torch.full((queries.shape[0], k), -math.inf), torch.full((queries.shape[0], k), -1))
        distances, found = self.index.search(queries, k)
        return self._finish(distances, found, k)

    def remove(self, ids) -> int:
        ids = _as_ids(ids)
        return int(self.index.remove_ids(ids)) if len(ids) else 0

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"faiss": self.faiss.serialize_index(self.index)}

    @classmethod
    def from_arrays(cls, dim, metric, options, arrays):
        index = cls(dim, metric, **options)
        try:
            index.index = index.faiss.deserialize_index(np.ascontiguousarray(arrays["faiss"], dtype=np.uint8))
        except RuntimeError as error:
            raise CorruptedFileError(f"unreadable FAISS index ({error})") from error
        if index.index.d != dim:
            raise IncompatibleMemoryError(f"FAISS index holds vectors of width {index.index.d}, expected {dim}")
        return index


class FaissFlatIndex(FaissIndex):
    """Exact FAISS search."""

    backend = "faiss-flat"

    def _build(self):
        flat = self.faiss.IndexFlatIP(self.dim) if self.metric == "ip" else self.faiss.IndexFlatL2(self.dim)
        return self.faiss.IndexIDMap2(flat)


class FaissIVFIndex(FaissIndex):
    """Inverted lists (optionally product-quantised). Until it holds `train_size` vectors it keeps
    them in an exact buffer; then it trains its coarse quantizer on them and moves them in."""

    backend = "faiss-ivf"

    def __init__(self, dim: int, metric: str = "ip", nlist: int = 1024, nprobe: int = 32,
                 pq_m: int | None = None, train_size: int | None = None):
        if pq_m is not None and dim % pq_m:
            raise ConfigError(f"pq_m={pq_m} must divide the vector width {dim}")
        self.nlist, self.nprobe, self.pq_m = nlist, nprobe, pq_m
        self.train_size = train_size or 39 * nlist  # FAISS warns below ~39 points per centroid
        super().__init__(dim, metric)
        self.buffer = TorchIndex(dim, metric)

    def options(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "pq_m": self.pq_m, "train_size": self.train_size}

    def _build(self):
        quantizer = self.faiss.IndexFlatIP(self.dim) if self.metric == "ip" else self.faiss.IndexFlatL2(self.dim)
        if self.pq_m:
            index = self.faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, self.pq_m, 8, self.faiss_metric)
        else:
            index = self.faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, self.faiss_metric)
        index.nprobe = self.nprobe
        self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        return index

    def set_nprobe(self, nprobe: int) -> None:
        """Search-time accuracy/speed knob: how many inverted lists each query scans."""
        self.nprobe = nprobe
        self.index.nprobe = nprobe

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def __len__(self) -> int:
        return int(self.index.ntotal) + len(self.buffer)

    def add(self, vectors, ids) -> None:
        if self.is_trained:
            super().add(vectors, ids)
            return
        self.buffer.add(_as_float32_numpy(vectors) if not isinstance(vectors, torch.Tensor) else vectors, ids)
        if len(self.buffer) >= self.train_size:
            buffered, buffered_ids = _as_float32_numpy(self.buffer.vectors), self.buffer.ids.numpy()
            self.index.train(buffered)
            self.index.add_with_ids(buffered, buffered_ids)
            self.buffer = TorchIndex(self.dim, self.metric)

    def search(self, queries, k: int):
        if not self.is_trained:
            return self.buffer.search(torch.as_tensor(_as_float32_numpy(queries)), k)
        return super().search(queries, k)

    def remove(self, ids) -> int:
        return self.buffer.remove(ids) + (super().remove(ids) if self.is_trained else 0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = super().to_arrays()
        arrays.update({f"buffer_{name}": value for name, value in self.buffer.to_arrays().items()})
        return arrays

    @classmethod
    def from_arrays(cls, dim, metric, options, arrays):
        index = super().from_arrays(dim, metric, options, arrays)
        index.index.nprobe = index.nprobe
        index.buffer.add(arrays["buffer_vectors"], arrays["buffer_ids"])
        return index


class FaissHNSWIndex(FaissIndex):
    """HNSW graph search. Removal marks ids as tombstones that searches skip; once tombstones
    exceed `rebuild_fraction` of the graph it is rebuilt from the live vectors."""

    backend = "faiss-hnsw"

    def __init__(self, dim: int, metric: str = "ip", m: int = 32, ef_search: int = 128,
                 ef_construction: int = 80, rebuild_fraction: float = 0.25):
        self.m, self.ef_search, self.ef_construction = m, ef_search, ef_construction
        self.rebuild_fraction = rebuild_fraction
        self.tombstones: set[int] = set()
        super().__init__(dim, metric)

    def options(self) -> dict[str, Any]:
        return {"m": self.m, "ef_search": self.ef_search, "ef_construction": self.ef_construction,
                "rebuild_fraction": self.rebuild_fraction}

    def _build(self):
        graph = self.faiss.IndexHNSWFlat(self.dim, self.m, self.faiss_metric)
        graph.hnsw.efSearch = self.ef_search
        graph.hnsw.efConstruction = self.ef_construction
        self._graph = graph  # the id map does not own it: keep it alive, and reachable for set_ef_search
        return self.faiss.IndexIDMap2(graph)

    def set_ef_search(self, ef_search: int) -> None:
        """Search-time accuracy/speed knob (larger: better recall, slower)."""
        self.ef_search = ef_search
        self._graph.hnsw.efSearch = ef_search

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def search(self, queries, k: int):
        if not self.tombstones:
            return super().search(queries, k)
        self._check_dim(queries, "queries")
        queries = _as_float32_numpy(queries)
        extra = min(len(self.tombstones), int(self.index.ntotal))
        distances, found = self.index.search(queries, k + extra)
        dead = np.isin(found, np.fromiter(self.tombstones, dtype=np.int64))
        found = np.where(dead, -1, found)
        # Move live results to the front of each row, keeping their order.
        order = np.argsort(dead, axis=1, kind="stable")
        return self._finish(np.take_along_axis(distances, order, 1), np.take_along_axis(found, order, 1), k)

    def remove(self, ids) -> int:
        ids = _as_ids(ids)
        present = ids[np.isin(ids, self._all_ids())]
        fresh = set(present.tolist()) - self.tombstones
        self.tombstones |= fresh
        if len(self.tombstones) > self.rebuild_fraction * max(1, int(self.index.ntotal)):
            self._rebuild()
        return len(fresh)

    def _all_ids(self) -> np.ndarray:
        return self.faiss.vector_to_array(self.index.id_map)

    def _rebuild(self) -> None:
        all_ids = self._all_ids()
        live = ~np.isin(all_ids, np.fromiter(self.tombstones, dtype=np.int64))
        vectors = np.stack([self.index.reconstruct(int(i)) for i in all_ids[live]]) if live.any() else None
        self.index = self._build()
        self.tombstones = set()
        if vectors is not None:
            self.index.add_with_ids(vectors, all_ids[live])

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = super().to_arrays()
        arrays["tombstones"] = np.array(sorted(self.tombstones), dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, dim, metric, options, arrays):
        index = super().from_arrays(dim, metric, options, arrays)
        index.tombstones = set(arrays["tombstones"].tolist())
        index._graph = index.faiss.downcast_index(index.index.index)
        index._graph.hnsw.efSearch = index.ef_search
        return index


_BACKEND_CLASSES: dict[str, type[VectorIndex]] = {
    "torch": TorchIndex, "faiss-flat": FaissFlatIndex, "faiss-ivf": FaissIVFIndex, "faiss-hnsw": FaissHNSWIndex,
}


def make_index(backend: str, dim: int, metric: str = "ip", **options: Any) -> VectorIndex:
    """Build an empty index of the given backend (see the table at the top of this module)."""
    try:
        cls = _BACKEND_CLASSES[backend]
    except KeyError:
        raise ConfigError(f"unknown index backend {backend!r}; choose from {BACKENDS}") from None
    return cls(dim, metric, **options)


def index_from_arrays(backend: str, dim: int, metric: str, options: dict[str, Any],
                      arrays: dict[str, np.ndarray]) -> VectorIndex:
    try:
        cls = _BACKEND_CLASSES[backend]
    except KeyError:
        raise CorruptedFileError(f"saved index has unknown backend {backend!r}") from None
    try:
        return cls.from_arrays(dim, metric, options, arrays)
    except KeyError as error:
        raise CorruptedFileError(f"saved {backend} index lacks the array {error}") from None
