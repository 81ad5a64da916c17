"""A FAISS-backed group answers as the exact torch search does: the same items, scores and hit counts,
among all items or only those below an id, after removals, for both metrics, with fewer items than k."""

from __future__ import annotations

import pytest
import torch

from memlm.store import GroupSpec, StoreLayout
from memlm.store.group import MemoryGroup


def group(backend: str, keys: torch.Tensor, metric: str, **layout) -> MemoryGroup:
    heads, count, dim = keys.shape
    options = {"dtype": "float32"} if backend == "torch" else {}
    store = StoreLayout({"attention": GroupSpec(heads, dim, dim, metric)}, backend, options, **layout)
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
