"""A FAISS-backed group answers as the exact torch search does: the same items, scores and hit counts,
among all items or only those below an id, after removals, for both metrics, with fewer items than k."""

from __future__ import annotations

import pytest
import torch

from memlm.store import GroupSpec, StoreLayout
from memlm.store.group import MemoryGroup


def layout_for(backend: str, keys: torch.Tensor, metric: str, **layout) -> StoreLayout:
    heads, _, dim = keys.shape
    options = {"dtype": "float32"} if backend == "torch" else {}
    return StoreLayout({"attention": GroupSpec(heads, dim, dim, metric)}, backend, options, **layout)


def group(backend: str, keys: torch.Tensor, metric: str, **layout) -> MemoryGroup:
    count = keys.shape[1]
    store = layout_for(backend, keys, metric, **layout)
    memory = MemoryGroup(store.specs["attention"], store, torch.device("cpu"), torch.float32)
    origins = torch.stack([torch.zeros(count, dtype=torch.int64), torch.arange(count)], dim=1)
    memory.add(torch.arange(1, count + 1), keys, keys * 2, origins, heads_first=True)
    return memory


def assert_same(found, expected) -> None:
    assert torch.equal(found.positions, expected.positions)
    torch.testing.assert_close(found.scores, expected.scores, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_flat_finds_what_exact_search_finds(metric):
    keys = torch.randn(2, 200, 8, generator=torch.Generator().manual_seed(1))
    queries = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(2))
    exact, flat = group("torch", keys, metric), group("faiss-flat", keys, metric)
    for limit in (None, 150, 3):  # all items; those below id 151 (the newer excluded); fewer than k
        assert_same(flat.search_positions(queries, 5, limit), exact.search_positions(queries, 5, limit))
    found = flat.search_positions(queries, 5, 3)
    assert torch.isneginf(found.scores[..., 3:]).all() and (found.positions < 3).all()
    # search(): values and ids of what is found, below an id
    result, reference = flat.search(queries, 4, below_id=120), exact.search(queries, 4, below_id=120)
    assert torch.equal(result.ids, reference.ids) and (result.ids < 120).all()
    torch.testing.assert_close(result.values, reference.values)


def test_after_a_removal_positions_name_the_items_left():
    keys = torch.randn(1, 100, 8, generator=torch.Generator().manual_seed(3))
    queries = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(4))
    exact, flat = group("torch", keys, "ip"), group("faiss-flat", keys, "ip")
    best = exact.search(queries, 3).ids.unique()  # remove every item the queries found first
    assert exact.remove(best) == flat.remove(best) == len(best)
    assert_same(flat.search_positions(queries, 3), exact.search_positions(queries, 3))
    assert not torch.isin(flat.search(queries, 3).ids, best).any()


def test_hits_are_counted_alike():
    keys = torch.randn(1, 60, 4, generator=torch.Generator().manual_seed(5))
    queries = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(6))
    exact = group("torch", keys, "ip", eviction="least_used")
    flat = group("faiss-flat", keys, "ip", eviction="least_used")
    for memory in (exact, flat):
        memory.search_positions(queries, 3)
        memory.search_positions(queries, 3, 40)
    assert torch.equal(flat._hits.data, exact._hits.data) and int(flat._hits.data.sum()) == 2 * 7 * 3
    assert torch.equal(flat.eviction_candidates(5, "least_used"), exact.eviction_candidates(5, "least_used"))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_in_chunks_of_queries_equals_one_pass(metric, monkeypatch):
    """Queries are chunked so that one score matrix stays under a byte budget: a budget of a few
    queries at a time gives the same results as one pass."""
    import memlm.store.group as group_module

    keys = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(7))
    queries = torch.randn(2, 11, 8, generator=torch.Generator().manual_seed(8))
    whole = group("torch", keys, metric).search_positions(queries, 4)
    monkeypatch.setattr(group_module, "SCORE_BUDGET", 2 * 50 * 4 * 3)  # 3 queries' scores per chunk
    assert_same(group("torch", keys, metric).search_positions(queries, 4), whole)


@pytest.mark.parametrize("backend, metric", [("torch", "l2"), ("faiss-flat", "ip"), ("faiss-flat", "l2")])
def test_a_group_saved_and_loaded_searches_as_before(backend, metric):
    keys = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(9))
    queries = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(10))
    saved = group(backend, keys, metric)
    saved.add(torch.arange(41, 46), keys[:, :5] + 1, keys[:, :5], torch.tensor([[1, n] for n in range(5)]),
              heads_first=True)  # a second sequence: its run is restored too
    arrays, store = saved.to_arrays("attention.0"), layout_for(backend, keys, metric)
    loaded = MemoryGroup.from_arrays(store.specs["attention"], store, arrays, "attention.0", torch.device("cpu"),
                                     torch.float32)
    assert torch.equal(loaded.ids, saved.ids) and len(loaded) == 45
    assert loaded.latest_count(1, 10) == saved.latest_count(1, 10) == 5 and loaded.latest_count(0, 10) == 0
    assert_same(loaded.search_positions(queries, 4), saved.search_positions(queries, 4))
    torch.testing.assert_close(loaded.search(queries, 4).values, saved.search(queries, 4).values)
    if backend == "torch":  # an older file without the squared norms: recomputed from the keys
        older = {name: tensor for name, tensor in arrays.items() if not name.endswith("squared_norms")}
        assert len(older) < len(arrays)
        reloaded = MemoryGroup.from_arrays(store.specs["attention"], store, older, "attention.0",
                                           torch.device("cpu"), torch.float32)
        assert_same(reloaded.search_positions(queries, 4), saved.search_positions(queries, 4))


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
def test_slots_past_the_items_found_are_marked_and_empty(backend):
    """k above the items: the extra slots are invalid, with id -1, zero values and zero origins; an empty
    group gives nothing but such slots."""
    keys = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(11))
    queries = torch.randn(2, 20, 4, generator=torch.Generator().manual_seed(12))  # > 16 queries: the other product
    result = group(backend, keys, "ip").search(queries, 5)
    assert result.valid[..., :3].all() and not result.valid[..., 3:].any()
    assert (result.ids[..., 3:] == -1).all() and (result.values[..., 3:, :] == 0).all()
    assert sorted(result.ids[0, 0, :3].tolist()) == [1, 2, 3]
    assert torch.equal(result.origins[..., :3, 1], result.ids[..., :3] - 1)  # origins of what was found
    one = group(backend, keys[:, :1], "ip").search(queries, 2)  # a single item in each head
    assert one.valid[..., 0].all() and (one.ids[..., 0] == 1).all() and not one.valid[..., 1].any()
    empty = MemoryGroup(*(lambda store: (store.specs["attention"], store))(layout_for(backend, keys, "ip")),
                        torch.device("cpu"), torch.float32)
    nothing = empty.search(queries, 4)
    assert not nothing.valid.any() and (nothing.ids == -1).all()
    assert nothing.origins.shape == (2, 20, 4, 2) and (nothing.origins == 0).all()
