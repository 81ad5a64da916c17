"""One user's exact vector index (facts/vector_index.py): inner products by fact id, best first."""

from __future__ import annotations

import faiss
import numpy as np

from memlm.facts.vector_index import UserIndex


def _index():
    vectors = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # float64 on purpose
    index = UserIndex(3)
    index.add(vectors, [0, 7, 3, 12])  # id 0 is a real id
    return index


def test_search_returns_exact_inner_products_by_fact_id_best_first():
    index = _index()
    assert len(index) == 4
    found = index.search(np.array([0.5, 1.0, 0.25]), k=3)
    assert [fact for fact, _ in found] == [7, 0, 3]
    assert [score for _, score in found] == [np.float32(0.3 + 0.8), np.float32(0.5), np.float32(0.25)]
    assert all(type(fact) is int and type(score) is float for fact, score in found)


def test_asking_for_more_than_it_holds_returns_what_it_holds_id_0_included():
    found = _index().search([1.0, 0.0, 0.0], k=10)  # faiss pads with id -1: those are dropped
    assert sorted(fact for fact, _ in found) == [0, 3, 7, 12]
    assert found[0] == (0, 1.0)


def test_removed_ids_are_no_longer_found():
    index = _index()
    index.remove([7, 12])
    assert len(index) == 2
    assert [fact for fact, _ in index.search(np.array([0.6, 0.8, 0.0], dtype=np.float64), k=4)] == [0, 3]


def test_a_search_runs_faiss_on_one_thread_and_restores_the_setting():
    index = _index()
    threads = []
    real = index.index

    class Recording:
        def search(self, *args):
            threads.append(faiss.omp_get_max_threads())
            return real.search(*args)

    index.index = Recording()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index.search(np.ones(3), k=1)
        assert threads == [1] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(previous)
