"""The vector indexes one by one (`memlm.store.index`), on arrays small enough to check by hand:
argument checks, growth, exact search and its two-stage top-k, padding, removal, the FAISS wrappers'
own behaviour (IVF's buffer, HNSW's tombstones and rebuilds) and round trips through `to_arrays`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError
from memlm.store.index import (
    TOPK_CHUNK,
    FaissFlatIndex,
    FaissHNSWIndex,
    FaissIVFIndex,
    GrowableHeads,
    GrowableRows,
    TorchIndex,
    _as_float32_numpy,
    _as_ids,
    exact_topk,
    index_from_arrays,
    make_index,
)

BACKENDS = ("torch", "faiss-flat", "faiss-ivf", "faiss-hnsw")


def vectors(count: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def brute(queries: torch.Tensor, stored: torch.Tensor, ids: torch.Tensor, k: int, metric: str = "ip"):
    scores = queries @ stored.T if metric == "ip" else -torch.cdist(queries.double(), stored.double()).float() ** 2
    top = scores.topk(k)
    return top.values, ids[top.indices]


def test_inputs_become_contiguous_float32_and_flat_int64():
    half = torch.ones(2, 3, dtype=torch.bfloat16, requires_grad=True)
    converted = _as_float32_numpy(half)
    assert converted.dtype == np.float32 and converted.flags.c_contiguous and converted.shape == (2, 3)
    assert _as_float32_numpy(np.ones((3, 4), dtype=np.float32)[:, ::2]).flags.c_contiguous  # a strided view
    assert _as_ids(torch.tensor([[1], [2]], dtype=torch.int32)).tolist() == [1, 2]
    ids = _as_ids([3, 4])
    assert ids.dtype == np.int64 and ids.shape == (2,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_metric_width_and_shapes_are_config_errors(backend):
    with pytest.raises(ConfigError, match=r"metric must be one of \('ip', 'l2'\), got 'cosine'"):
        make_index(backend, 8, "cosine")
    for dim in (0, -1, 2.0):
        with pytest.raises(ConfigError, match="dim must be a positive integer"):
            make_index(backend, dim)
    index = make_index(backend, 8)
    with pytest.raises(IncompatibleMemoryError, match=r"vectors have shape \(2, 4\); this index holds vectors "
                                                      r"of width 8"):
        index.add(vectors(2, 4), torch.arange(2))
    with pytest.raises(IncompatibleMemoryError, match=r"queries have shape \(8,\)"):
        index.search(torch.zeros(8), 1)
    with pytest.raises(ConfigError, match="3 vectors but 2 ids"):
        index.add(vectors(3), torch.arange(2))


def test_unknown_backends_are_refused():
    with pytest.raises(ConfigError, match=r"unknown index backend 'annoy'; choose from \('torch', "):
        make_index("annoy", 8)
    with pytest.raises(CorruptedFileError, match="saved index has unknown backend 'annoy'"):
        index_from_arrays("annoy", 8, "ip", {}, {})
    with pytest.raises(CorruptedFileError, match="saved torch index lacks the array 'vectors'"):
        index_from_arrays("torch", 8, "ip", {}, {"ids": np.arange(2)})


def test_growable_rows_double_from_64_and_keep_rows_in_order():
    rows = GrowableRows((2,), torch.device("cpu"), torch.float32)
    assert rows.data.shape == (0, 2)
    rows.append(torch.ones(3, 2, dtype=torch.float64))
    assert rows.size == 3 and rows._data.shape[0] == 64 and rows.data.dtype == torch.float32
    rows.append(torch.arange(130.0).reshape(65, 2))
    assert rows.size == 68 and rows._data.shape[0] == 128
    rows.append(torch.zeros(200, 2))
    assert rows.size == 268 and rows._data.shape[0] == 268  # more than double: exactly what is needed
    assert torch.equal(rows.data[3], torch.tensor([0.0, 1.0])) and torch.equal(rows.data[:3], torch.ones(3, 2))
    mask = torch.zeros(268, dtype=torch.bool)
    mask[[1, 4, 5]] = True
    rows.keep(mask)
    assert rows.size == 3 and torch.equal(rows.data, torch.tensor([[1.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))


def test_growable_heads_grow_to_powers_of_two_from_1024_and_keep_positions_in_order():
    heads = GrowableHeads(2, (3,), torch.device("cpu"), torch.float32)
    first = torch.arange(12.0).reshape(2, 2, 3)
    heads.append(first)
    assert heads.size == 2 and heads._data.shape[1] == 1024 and torch.equal(heads.data, first)
    heads.append(torch.zeros(2, 1100, 3))
    assert heads.size == 1102 and heads._data.shape[1] == 2048
    heads.append(torch.zeros(2, 5000, 3))
    assert heads._data.shape[1] == 8192  # 6102 rounded up to a power of two
    mask = torch.zeros(heads.size, dtype=torch.bool)
    mask[1] = True
    heads.keep(mask)
    assert heads.size == 1 and torch.equal(heads.data, first[:, 1:2])


@pytest.mark.parametrize("length, k", [(4 * TOPK_CHUNK + 1, 5), (5 * TOPK_CHUNK, 7), (4 * TOPK_CHUNK + 1, 1),
                                       (8 * TOPK_CHUNK, TOPK_CHUNK // 4 + 1), (3, 10)])
def test_exact_topk_matches_topk_in_both_stages_with_and_without_a_tail(length, k):
    scores = torch.randn(2, length, generator=torch.Generator().manual_seed(length + k))
    scores[1, -1] = 100.0  # the best of row 1 sits in the tail block (when there is one)
    values, positions = exact_topk(scores, k)
    expected = scores.topk(min(k, length), dim=-1)
    assert torch.equal(values, expected.values) and torch.equal(positions, expected.indices)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
def test_exact_backends_give_brute_force_scores_and_ids(backend, metric):
    stored, queries, ids = vectors(50), vectors(7, seed=1), torch.arange(100, 150)
    index = make_index(backend, 8, metric, **({"query_chunk": 3} if backend == "torch" else {}))
    index.add(stored[:20], ids[:20])
    index.add(stored[20:].numpy(), ids[20:].numpy())
    assert len(index) == 50
    scores, found = index.search(queries, 4)
    expected_scores, expected_ids = brute(queries, stored, ids, 4, metric)
    assert found.dtype == torch.int64 and scores.dtype == torch.float32 and found.shape == (7, 4)
    assert torch.equal(found, expected_ids)
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_index_with_fewer_vectors_than_k_pads_with_minus_one_and_minus_infinity(backend):
    index = make_index(backend, 8)
    scores, found = index.search(vectors(2), 3)  # empty
    assert found.tolist() == [[-1] * 3] * 2 and torch.isinf(scores).all() and (scores < 0).all()
    index.add(vectors(2, seed=1), torch.tensor([7, 9]))
    scores, found = index.search(vectors(2), 3)
    assert sorted(found[0, :2].tolist()) == [7, 9] and found[:, 2].tolist() == [-1, -1]
    assert torch.isfinite(scores[:, :2]).all() and (scores[:, 2] == -math.inf).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_counts_what_it_removed_and_searches_never_return_it(backend):
    index = make_index(backend, 8, **({"rebuild_fraction": 0.9} if backend == "faiss-hnsw" else {}))
    stored = torch.nn.functional.normalize(vectors(40), dim=-1)  # unit vectors: each is its own best match
    index.add(stored, torch.arange(40))
    assert index.remove([]) == 0 and index.remove([1000, 2000]) == 0
    assert index.remove(torch.tensor([3, 5, 3])) == 2 and len(index) == 38
    assert index.remove(np.array([5])) == 0 and len(index) == 38
    _, found = index.search(stored[[3, 5, 6]], 5)
    assert not torch.isin(found, torch.tensor([3, 5])).any() and found[2, 0] == 6


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_index_keeps_l2_norms_through_removal_and_round_trips(metric):
    stored, queries = vectors(30), vectors(4, seed=2)
    index = TorchIndex(8, metric, dtype=torch.bfloat16)
    index.add(stored, torch.arange(30))
    index.remove([0, 10])
    arrays = index.to_arrays()
    assert set(arrays) == ({"vectors", "ids", "squared_norms"} if metric == "l2" else {"vectors", "ids"})
    assert arrays["vectors"].dtype == np.float32
    assert arrays["ids"].tolist() == [i for i in range(30) if i not in (0, 10)]
    if metric == "l2":  # the norms of the float32 vectors given, not of the bfloat16 ones stored
        kept = torch.tensor(arrays["ids"])
        torch.testing.assert_close(torch.tensor(arrays["squared_norms"]), stored[kept].pow(2).sum(-1))
    restored = index_from_arrays("torch", 8, metric, {"dtype": torch.bfloat16}, arrays)
    assert len(restored) == 28 and restored.dtype == torch.bfloat16
    assert torch.equal(restored.search(queries, 5)[1], index.search(queries, 5)[1])
    torch.testing.assert_close(restored.search(queries, 5)[0], index.search(queries, 5)[0])


def test_torch_index_refuses_saved_norms_of_the_wrong_length():
    index = TorchIndex(8, "l2")
    index.add(vectors(5), torch.arange(5))
    arrays = index.to_arrays()
    arrays["squared_norms"] = arrays["squared_norms"][:3]
    with pytest.raises(CorruptedFileError, match=r"saved squared norms have shape \(3,\), expected \(5,\)"):
        index_from_arrays("torch", 8, "l2", {}, arrays)


def test_faiss_arrays_that_are_not_an_index_or_of_another_width_are_refused():
    with pytest.raises(CorruptedFileError, match="unreadable FAISS index"):
        index_from_arrays("faiss-flat", 8, "ip", {}, {"faiss": np.frombuffer(b"not an index", dtype=np.uint8)})
    other = FaissFlatIndex(4)
    other.add(vectors(3, 4), torch.arange(3))
    with pytest.raises(IncompatibleMemoryError, match="FAISS index holds vectors of width 4, expected 8"):
        index_from_arrays("faiss-flat", 8, "ip", {}, other.to_arrays())


def test_ivf_checks_its_product_quantiser_records_its_options_and_trains_at_39_per_list():
    with pytest.raises(ConfigError, match="pq_m=3 must divide the vector width 8"):
        FaissIVFIndex(8, pq_m=3)
    index = FaissIVFIndex(8, nlist=4, nprobe=2)
    assert index.train_size == 156 and index.index.nprobe == 2
    assert index.options() == {"nlist": 4, "nprobe": 2, "pq_m": None, "train_size": 156}
    index.set_nprobe(3)
    assert (index.nprobe, index.index.nprobe) == (3, 3)
    index.add(vectors(155), torch.arange(155))
    assert not index.is_trained and len(index) == 155 and len(index.buffer) == 155
    index.add(vectors(1, seed=5).numpy(), np.array([155]))
    assert index.is_trained and len(index) == 156 and len(index.buffer) == 0 and index.index.ntotal == 156
    quantised = FaissIVFIndex(8, nlist=2, pq_m=4, train_size=600)
    quantised.add(vectors(600), torch.arange(600))
    assert quantised.is_trained and type(quantised.index).__name__ == "IndexIVFPQ" and len(quantised) == 600


def test_ivf_removes_from_its_buffer_and_round_trips_before_and_after_training():
    index = FaissIVFIndex(8, "l2", nlist=2, nprobe=2, train_size=100)
    stored = vectors(60)
    index.add(stored, torch.arange(60))
    assert index.remove([1, 2, 999]) == 2 and len(index) == 58
    restored = index_from_arrays("faiss-ivf", 8, "l2", index.options(), index.to_arrays())
    assert not restored.is_trained and len(restored) == 58
    assert torch.equal(restored.search(stored[:5], 3)[1], index.search(stored[:5], 3)[1])
    index.add(vectors(60, seed=1), torch.arange(60, 120))
    assert index.is_trained and index.remove([3, 70]) == 2 and len(index) == 116
    index.set_nprobe(1)
    restored = index_from_arrays("faiss-ivf", 8, "l2", index.options(), index.to_arrays())
    assert restored.is_trained and len(restored) == 116 and restored.index.nprobe == 1
    wider = index_from_arrays("faiss-ivf", 8, "l2", {**index.options(), "nprobe": 2}, index.to_arrays())
    assert wider.index.nprobe == 2  # the options given win over the value saved in the index
    scores, found = restored.search(stored[:5], 3)
    assert torch.equal(found, index.search(stored[:5], 3)[1]) and (scores <= 0).all()  # minus squared distances


def test_hnsw_records_its_options_and_passes_ef_search_to_the_graph():
    index = FaissHNSWIndex(8, m=8, ef_search=16, ef_construction=20, rebuild_fraction=0.5)
    assert index.options() == {"m": 8, "ef_search": 16, "ef_construction": 20, "rebuild_fraction": 0.5}
    assert index._graph.hnsw.efSearch == 16 and index._graph.hnsw.efConstruction == 20
    index.set_ef_search(40)
    assert index.ef_search == 40 and index._graph.hnsw.efSearch == 40


def test_hnsw_tombstones_are_skipped_in_order_until_a_rebuild_clears_them():
    index = FaissHNSWIndex(8, rebuild_fraction=0.25)
    stored = torch.nn.functional.normalize(vectors(20), dim=-1)
    index.add(stored, torch.arange(20))
    _, exact_ids = brute(stored[:3], stored, torch.arange(20), 6)
    assert index.remove([0, 1, 2]) == 3  # 3 of 20: under a quarter, kept as tombstones
    assert index.tombstones == {0, 1, 2} and index.index.ntotal == 20 and len(index) == 17
    scores, found = index.search(stored[:3], 6)
    for row in range(3):  # the exact ranking with the removed ids left out, order kept
        expected = [i for i in exact_ids[row].tolist() if i not in (0, 1, 2)]
        assert found[row, : len(expected)].tolist() == expected
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert index.remove([1, 3]) == 1 and index.tombstones == {0, 1, 2, 3}  # 1 was gone already
    assert index.remove([4, 5]) == 2  # 6 of 20 > a quarter: rebuilt from the live vectors
    assert index.tombstones == set() and index.index.ntotal == 14 and len(index) == 14
    assert index.ef_search == index._graph.hnsw.efSearch
    _, found = index.search(stored[6:7], 1)
    assert found.tolist() == [[6]]
    torch.testing.assert_close(index.search(stored[6:7], 1)[0], torch.tensor([[float(stored[6] @ stored[6])]]))


def test_hnsw_that_loses_every_vector_is_empty_and_still_usable():
    index = FaissHNSWIndex(8, rebuild_fraction=0.1)
    index.add(vectors(4), torch.arange(4))
    assert index.remove(torch.arange(4)) == 4 and len(index) == 0 and index.index.ntotal == 0
    index.add(vectors(2, seed=1), torch.tensor([10, 11]))
    assert sorted(index.search(vectors(1, seed=1), 2)[1][0].tolist()) == [10, 11]


def test_hnsw_round_trips_its_tombstones_and_ef_search():
    index = FaissHNSWIndex(8, ef_search=24, rebuild_fraction=0.9)
    stored = vectors(30)
    index.add(stored, torch.arange(30))
    index.remove([4, 7])
    arrays = index.to_arrays()
    assert arrays["tombstones"].tolist() == [4, 7] and arrays["tombstones"].dtype == np.int64
    restored = index_from_arrays("faiss-hnsw", 8, "ip", index.options(), arrays)
    assert restored.tombstones == {4, 7} and len(restored) == 28 and restored._graph.hnsw.efSearch == 24
    assert torch.equal(restored.search(stored[:6], 5)[1], index.search(stored[:6], 5)[1])
    louder = index_from_arrays("faiss-hnsw", 8, "ip", {**index.options(), "ef_search": 48}, arrays)
    assert louder._graph.hnsw.efSearch == 48  # the options given win over the value saved in the graph
    restored.set_ef_search(12)  # reaches the loaded graph, not a stale one
    assert restored._graph.hnsw.efSearch == 12
    assert restored.index.index.this == restored._graph.this  # the graph the id map searches


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_index_holding_one_vector_finds_it(backend):
    index = make_index(backend, 8)
    index.add(vectors(1), torch.tensor([42]))
    scores, found = index.search(vectors(1), 2)
    assert found.tolist() == [[42, -1]] and torch.isfinite(scores[0, 0]) and scores[0, 1] == -math.inf


def test_documented_defaults_and_the_narrowest_width():
    assert TorchIndex(4).metric == "ip" and TorchIndex(4).query_chunk == 1024 and FaissFlatIndex(4).metric == "ip"
    assert FaissIVFIndex(4).options() == {"nlist": 1024, "nprobe": 32, "pq_m": None, "train_size": 39 * 1024}
    assert FaissHNSWIndex(4).options() == {"m": 32, "ef_search": 128, "ef_construction": 80, "rebuild_fraction": 0.25}
    for backend in BACKENDS:  # one number per vector is still a vector
        index = make_index(backend, 1)
        index.add(torch.tensor([[2.0], [-1.0]]), torch.tensor([5, 6]))
        assert index.search(torch.tensor([[1.0]]), 1)[1].tolist() == [[5]]
    assert _as_float32_numpy(np.ones((2, 3), dtype=np.float64)).dtype == np.float32
    assert _as_ids(np.array([1, 2], dtype=np.int32)).dtype == np.int64


def test_growable_heads_fill_exactly_and_grow_past_a_power_of_two_from_empty():
    heads = GrowableHeads(1, (), torch.device("cpu"), torch.float32)
    heads.append(torch.arange(1025.0).reshape(1, 1025))  # 1,025 needs 2,048, not 1,024
    assert heads._data.shape[1] == 2048 and torch.equal(heads.data, torch.arange(1025.0).reshape(1, 1025))
    full = GrowableHeads(1, (), torch.device("cpu"), torch.float32)
    full.append(torch.zeros(1, 1000))
    full.append(torch.ones(1, 24))  # exactly the capacity: no growth
    assert full.size == 1024 and full._data.shape[1] == 1024


@pytest.mark.parametrize("backend", BACKENDS)
def test_id_zero_is_a_real_id_and_empty_results_have_one_row_per_query(backend):
    index = make_index(backend, 8)
    scores, found = index.search(vectors(2), 3)
    assert scores.shape == found.shape == (2, 3)
    stored = torch.nn.functional.normalize(vectors(2, seed=3), dim=-1)
    index.add(stored, torch.tensor([0, 1]))
    scores, found = index.search(stored[:1], 1)
    assert found.tolist() == [[0]] and torch.isfinite(scores).all()


def test_ivf_ranks_by_its_metric_before_and_after_training_and_builds_what_it_was_asked():
    import faiss
    near, long = torch.zeros(1, 8), torch.zeros(1, 8)
    near[0, 0], long[0, 0] = 1.0, 10.0  # by L2 `near` is closer to the query; by inner product `long` wins
    index = FaissIVFIndex(8, "l2", nlist=2, nprobe=2, train_size=100)
    index.add(torch.cat([near, long]), torch.tensor([1, 2]))
    assert not index.is_trained and index.search(near, 1)[1].tolist() == [[1]]
    index.add(vectors(100, seed=4), torch.arange(100, 200))
    assert index.is_trained
    index.add(near * 0.5, torch.tensor([3]))  # after training: straight into the inverted lists
    assert len(index) == 103 and index.search(near * 0.5, 1)[1].tolist() == [[3]]
    assert type(index._quantizer).__name__ == "IndexFlatL2" and index.index.quantizer is not None
    assert type(FaissIVFIndex(8, "ip", nlist=2)._quantizer).__name__ == "IndexFlatIP"
    quantised = FaissIVFIndex(8, "ip", nlist=3, pq_m=4).index
    assert (quantised.nlist, quantised.pq.M, quantised.pq.nbits) == (3, 4, 8)
    assert quantised.metric_type == faiss.METRIC_INNER_PRODUCT and quantised.quantizer is not None


def test_hnsw_pads_when_tombstones_leave_fewer_live_vectors_than_k():
    index = FaissHNSWIndex(8, rebuild_fraction=0.9)
    stored = torch.nn.functional.normalize(vectors(5, seed=6), dim=-1)
    index.add(stored, torch.arange(10, 15))
    index.remove([12])
    scores, found = index.search(stored[:1], 5)
    assert found.shape == (1, 5) and sorted(found[0, :4].tolist()) == [10, 11, 13, 14] and found[0, 4] == -1
    assert torch.isfinite(scores[0, :4]).all() and scores[0, 4] == -math.inf
    with pytest.raises(IncompatibleMemoryError, match=r"^queries have shape \(1, 4\)"):
        index.search(torch.zeros(1, 4), 1)


def test_hnsw_rebuilds_only_past_its_fraction_and_ranks_by_inner_product():
    index = FaissHNSWIndex(8, rebuild_fraction=0.25)
    index.add(vectors(4), torch.arange(4))
    index.remove([0])  # 1 of 4: not more than a quarter, kept as a tombstone
    assert index.tombstones == {0} and index.index.ntotal == 4
    stored, queries = vectors(30, seed=7), vectors(5, seed=8)  # vectors of unequal lengths
    graph = FaissHNSWIndex(8, "ip")
    graph.add(stored, torch.arange(30))
    assert torch.equal(graph.search(queries, 1)[1], brute(queries, stored, torch.arange(30), 1)[1])


def test_a_missing_faiss_is_named_with_its_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match=r"^FAISS backends need the faiss-cpu package: pip install faiss-cpu$"):
        FaissFlatIndex(8)


def test_growable_buffers_keep_their_dtype_and_do_not_grow_when_exactly_full():
    rows = GrowableRows((), torch.device("cpu"), torch.float32)
    rows.append(torch.zeros(3))
    rows.append(torch.ones(61))  # exactly the first capacity, 64
    assert rows.size == 64 and rows._data.shape[0] == 64
    heads = GrowableHeads(2, (3,), torch.device("cpu"), torch.bfloat16)
    assert heads.data.dtype == torch.bfloat16
    heads.append(torch.ones(2, 1, 3))
    heads.append(torch.ones(2, 2000, 3))  # grown twice: still bfloat16
    assert heads.data.dtype == torch.bfloat16 and heads.data.shape == (2, 2001, 3)
