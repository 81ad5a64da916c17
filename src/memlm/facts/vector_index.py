"""One user's vectors in this process: exact inner-product search with FAISS, by fact id."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


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


class UserIndex:
    """Exact inner-product search over one user's fact vectors (FAISS `IndexIDMap2(IndexFlatIP)`), by
    fact id. Exact on purpose: a user holds thousands of facts, not millions, and a missed fact is a
    lost memory."""

    def __init__(self, dimension: int):
        import faiss

        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(fact id, inner product) of the `k` best, best first."""
        with _one_faiss_thread():
            scores, found = self.index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k)
        return [(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True) if i >= 0]

