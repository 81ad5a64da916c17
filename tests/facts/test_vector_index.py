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


def test_a_search_runs_faiss_on_one_thread_and_restores_the_setting(monkeypatch):
    index = _index()
    threads = []
    real = faiss.knn

    def recording(*args, **kwargs):
        threads.append(faiss.omp_get_max_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(faiss, "knn", recording)
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index.search(np.ones(3), k=1)
        index.near(np.ones((1, 3)), 0.5)
        assert threads == [1, 1] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(previous)


def _random_index(count: int = 3000, dimension: int = 384, seed: int = 0) -> tuple[UserIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dimension), dtype=np.float32)
    vectors[1::7] = vectors[::7][:len(vectors[1::7])] + 0.02 * rng.standard_normal((len(vectors[1::7]), dimension),
                                                                                    dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(10 * count)[:count].astype(np.int64)
    index = UserIndex(dimension)
    for start in range(0, count, 500):  # grows in steps, as a sync adds
        index.add(vectors[start:start + 500], ids[start:start + 500])
    return index, vectors, ids


def _flat(vectors: np.ndarray, ids: np.ndarray):
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(np.ascontiguousarray(vectors), ids)
    return flat


def test_scores_are_those_of_a_faiss_flat_index_to_the_bit_also_after_removals():
    index, vectors, ids = _random_index()
    rng = np.random.default_rng(1)
    gone = rng.choice(ids, 700, replace=False)
    index.remove(gone)
    index.remove([-5, int(gone[0])])  # ids it does not hold are ignored
    keep = ~np.isin(ids, gone)
    flat = _flat(vectors[keep], ids[keep])
    assert len(index) == int(keep.sum()) and set(index.ids().tolist()) == set(ids[keep].tolist())
    queries = vectors[rng.choice(len(vectors), 20)] + 0.01
    for query in queries:
        scores, found = flat.search(query.reshape(1, -1).astype(np.float32), 10)
        assert index.search(query, 10) == [(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True)]


def test_adding_an_id_it_holds_replaces_its_vector():
    index = _index()
    index.add(np.array([[0.0, 1.0, 0.0]]), [0])
    assert len(index) == 4
    assert index.search([0.0, 1.0, 0.0], k=1) == [(0, 1.0)]


def test_near_returns_exactly_the_ids_a_full_search_scores_at_or_above_the_threshold():
    """The bound from the first 64 dimensions must never drop a fact a full search would find
    (that would store a near-duplicate); the scores are the full search's, to the bit."""
    index, vectors, ids = _random_index()
    index.remove(ids[::11])
    flat = _flat(vectors[~np.isin(ids, ids[::11])], ids[~np.isin(ids, ids[::11])])
    rng = np.random.default_rng(2)
    queries = np.concatenate([vectors[rng.choice(len(vectors), 30)],
                              rng.standard_normal((5, vectors.shape[1]), dtype=np.float32)])
    for threshold in (0.99, 0.95, 0.5):
        found = index.near(queries, threshold)
        for query, near in zip(queries, found, strict=True):
            scores, labels = flat.search(query.reshape(1, -1), flat.ntotal)
            expected = sorted(((int(i), float(s)) for i, s in zip(labels[0], scores[0], strict=True)
                               if s >= threshold), key=lambda pair: (-pair[1], pair[0]))
            assert near == expected
    assert any(len(near) > 1 for near in index.near(queries, 0.95))  # the planted near-duplicates are found
    assert UserIndex(4).near(np.ones((2, 4)), 0.9) == [[], []]
