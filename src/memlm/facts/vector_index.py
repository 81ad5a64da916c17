"""One user's vectors in this process: exact inner-product search with FAISS's kernel, by fact id.

The vectors live in one growing float32 matrix (rows in use first) that FAISS searches in place
(`faiss.knn`, the same kernel as `IndexFlatIP`, so the scores are the same to the bit). Removing a
fact moves the last row into its place: O(dimension), where `IndexIDMap2.remove_ids` rewrote the
whole index and rebuilt its id map (~7 ms at 100K facts, on every sync after a fact was superseded,
updated or deleted).

`near` answers what the near-duplicate check asks ("every fact with cosine >= t, for each of these
vectors") without reading every vector in full: an upper bound from the first `PREFIX` dimensions
(Cauchy-Schwarz on the rest) rules out the facts that cannot reach `t`, and the few left are scored
exactly. At the default threshold (0.99) that reads a sixth of the memory a full search reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

PREFIX = 64  # dimensions of the bound `near` computes for every row
BOUND_SLACK = 1e-3  # float32 rounding of the bound (~1e-6) many times over: the bound never drops a real hit


@contextlib.contextmanager
def _one_faiss_thread() -> Iterator[None]:
    """One query against a flat index is one sweep over memory: extra OpenMP threads only add their
    wake-up cost and contend with torch's pool, which has just embedded the query (on 2 cores this
    doubled the p95 of a search at 100K facts; benchmarks/bank_latency.py)."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def faiss_knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row numbers) of the `k` largest inner products of each query, best first (FAISS, one thread)."""
    import faiss

    with _one_faiss_thread():
        return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


class UserIndex:
    """Exact inner-product search over one user's fact vectors, by fact id. Exact on purpose: a user
    holds thousands of facts, not millions, and a missed fact is a lost memory."""

    def __init__(self, dimension: int):
        self.dimension = dimension
        self._vectors = np.zeros((0, dimension), dtype=np.float32)  # rows [0, size) in use
        self._prefix = np.zeros((0, min(PREFIX, dimension)), dtype=np.float32)  # their first PREFIX values
        self._tail = np.zeros(0, dtype=np.float32)  # the norm of the rest of each row
        self._ids = np.zeros(0, dtype=np.int64)
        self._row: dict[int, int] = {}  # fact id -> row
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, fact_id: object) -> bool:
        return fact_id in self._row

    def ids(self) -> np.ndarray:
        """The ids it holds (in row order)."""
        return self._ids[:self._size].copy()

    def reserve(self, rows: int) -> None:
        """Make room for `rows` vectors in all (a sync that is about to add many says so first)."""
        if rows <= len(self._ids):
            return
        capacity = max(rows, 2 * len(self._ids), 1024)  # pages never written are never resident
        for name in ("_vectors", "_prefix", "_tail", "_ids"):
            old = getattr(self, name)
            new = np.empty((capacity, *old.shape[1:]), dtype=old.dtype)
            new[:self._size] = old[:self._size]
            setattr(self, name, new)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors by fact id (an id it holds already is replaced)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        present = [int(i) for i in ids if int(i) in self._row]
        if present:
            self.remove(present)
        start, count = self._size, len(ids)
        self.reserve(start + count)
        self._vectors[start:start + count] = vectors
        width = self._prefix.shape[1]
        self._prefix[start:start + count] = vectors[:, :width]
        self._tail[start:start + count] = np.linalg.norm(vectors[:, width:], axis=1)
        self._ids[start:start + count] = ids
        for offset, fact_id in enumerate(ids.tolist()):
            self._row[fact_id] = start + offset
        self._size += count

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Remove fact ids (ids it does not hold are ignored): the last row moves into each hole."""
        for fact_id in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            row = self._row.pop(fact_id, None)
            if row is None:
                continue
            last = self._size - 1
            if row != last:
                for array in (self._vectors, self._prefix, self._tail, self._ids):
                    array[row] = array[last]
                self._row[int(self._ids[row])] = row
            self._size = last

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(fact id, inner product) of the `k` best, best first."""
        return self.search_many(np.asarray(query, dtype=np.float32).reshape(1, -1), k)[0]

    def search_many(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """`search` for each row of `queries`, in one call (the scores are those of one query at a time)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        k = min(int(k), self._size)
        if k <= 0:
            return [[] for _ in range(len(queries))]
        scores, rows = faiss_knn(queries, self._vectors[:self._size], k)
        ids = self._ids
        return [[(int(ids[r]), float(s)) for r, s in zip(found, values, strict=True) if r >= 0]
                for found, values in zip(rows, scores, strict=True)]

    def near(self, queries: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
        """For each query, every (fact id, inner product) with inner product >= `threshold`, best
        first (ties by id): exactly those `search` would score so, at a fraction of the reads."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        if self._size == 0:
            return [[] for _ in range(len(queries))]
        width = self._prefix.shape[1]
        results = []
        for query in queries:
            # q.x <= q[:w].x[:w] + |q[w:]| |x[w:]| (Cauchy-Schwarz on the rest): rows whose bound is
            # below the threshold cannot reach it.
            bound = self._prefix[:self._size] @ query[:width] + self._tail[:self._size] * np.linalg.norm(query[width:])
            rows = np.flatnonzero(bound >= threshold - BOUND_SLACK)
            found: list[tuple[int, float]] = []
            if len(rows):
                # the same kernel as a full search, row by row: the same scores to the bit
                scores, order = faiss_knn(query.reshape(1, -1), np.ascontiguousarray(self._vectors[rows]), len(rows))
                found = [(int(self._ids[rows[r]]), float(s)) for r, s in zip(order[0], scores[0], strict=True)
                         if r >= 0 and s >= threshold]
                found.sort(key=lambda pair: (-pair[1], pair[0]))
            results.append(found)
        return results
