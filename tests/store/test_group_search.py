"""A FAISS-backed group answers as the exact torch search does: the same items, scores and hit counts,
among all items or only those below an id, after removals, for both metrics, with fewer items than k."""

from __future__ import annotations

import pytest
import torch

from memlm.errors import ConfigError
from memlm.store import GroupSpec, StoreLayout
from memlm.store.group import MemoryGroup


def layout_for(backend: str, keys: torch.Tensor, metric: str, backend_options: dict | None = None,
               **layout) -> StoreLayout:
    heads, _, dim = keys.shape
    if backend_options is None:
        backend_options = {"dtype": "float32"} if backend == "torch" else {}
    return StoreLayout({"attention": GroupSpec(heads, dim, dim, metric)}, backend, backend_options, **layout)


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


@pytest.mark.parametrize("metric, search_dtype, size", [("ip", "float32", 4), ("ip", "bfloat16", 2),
                                                        ("l2", "bfloat16", 4)])
def test_each_score_matrix_is_as_large_as_the_budget_allows_and_no_larger(metric, search_dtype, size, monkeypatch):
    """Bytes per score: the keys' element size, at least 2, and 4 for L2 (its scores are float32)."""
    import memlm.store.group as group_module

    keys = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(13))
    queries = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(14))
    store = StoreLayout({"attention": GroupSpec(2, 8, 8, metric)}, "torch", {"dtype": search_dtype})
    memory = MemoryGroup(store.specs["attention"], store, torch.device("cpu"), torch.float32)
    memory.add(torch.arange(50), keys, keys, torch.zeros(50, 2, dtype=torch.int64), heads_first=True)
    chunks: list[int] = []
    similarity = group_module._similarity

    def counted(part: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        chunks.append(part.shape[1])
        return similarity(part, keys)

    monkeypatch.setattr(group_module, "_similarity", counted)
    whole = memory.search_positions(queries, 4)
    assert chunks == [6]
    for budget_queries, expected in ((3, [3, 3]), (4, [4, 2]), (0.5, [1] * 6)):  # two chunks; a last short one
        chunks.clear()  # half a query's scores: one query a chunk
        monkeypatch.setattr(group_module, "SCORE_BUDGET", int(2 * 50 * size * budget_queries))
        assert_same(memory.search_positions(queries, 4), whole)
        assert chunks == expected


def test_faiss_search_below_an_id_it_holds_finds_every_older_item_including_id_zero():
    """Ids start at 0 as the store allocates them; `below_id` names an item that is there (excluded)."""
    count = 8
    keys = torch.arange(count, dtype=torch.float32).view(1, count, 1).repeat(1, 1, 2)  # item i scores 2i
    store = layout_for("faiss-flat", keys, "ip")
    memory = MemoryGroup(store.specs["attention"], store, torch.device("cpu"), torch.float32)
    memory.add(torch.arange(count), keys, keys, torch.zeros(count, 2, dtype=torch.int64), heads_first=True)
    query = torch.ones(1, 1, 2)
    found = memory.search(query, count - 1, below_id=count - 1)  # every item but the newest, best first
    assert found.ids[0, 0].tolist() == list(range(count - 2, -1, -1)) and found.valid.all()
    everything = memory.search(query, count)
    assert everything.ids[0, 0].tolist() == list(range(count - 1, -1, -1))  # the last item and id 0 too
    fewer = memory.search_positions(query, count + 2, count - 3)  # below id 5: five items, then nothing
    assert torch.isneginf(fewer.scores[0, 0, 5:]).all() and (fewer.positions[0, 0, 5:] == 0).all()


def test_an_id_an_index_still_returns_after_its_removal_is_not_a_result(monkeypatch):
    keys = torch.randn(1, 10, 4, generator=torch.Generator().manual_seed(15))
    memory = group("faiss-flat", keys, "ip", eviction="least_used")  # ids 1..10
    memory.remove(torch.tensor([10]))
    stale = (torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[10, 4, 99]]))  # a removed id, a live one, an unknown one
    monkeypatch.setattr(memory.indexes[0], "search", lambda queries, k: stale)
    found = memory.search(torch.zeros(1, 1, 4), 3)
    assert found.valid[0, 0].tolist() == [False, True, False] and found.ids[0, 0].tolist() == [-1, 4, -1]
    assert memory._hits.data.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]  # only the live item counts a hit


def test_the_gpu_product_gives_one_score_per_query_and_key():
    """Off the CPU `_similarity` is one batched product; meta tensors take that branch without a GPU."""
    from memlm.store.group import _similarity

    queries, keys = torch.empty(3, 5, 8, device="meta"), torch.empty(3, 7, 8, device="meta")
    assert _similarity(queries, keys).shape == (3, 5, 7)


def test_kernel_torch_never_calls_the_fused_kernel_and_triton_off_a_gpu_says_why(monkeypatch):
    import memlm.store.group as group_module
    from memlm.store.fused_topk import triton_importable

    keys = torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(16))
    monkeypatch.setattr(group_module, "fused_topk", lambda *args: pytest.fail("the fused kernel ran"))
    memory = group("torch", keys, "ip", backend_options={"dtype": "float32", "kernel": "torch"})
    expected = (keys[:, :3] @ keys.transpose(1, 2)).topk(2)
    assert torch.equal(memory.search_positions(keys[:, :3], 2).positions, expected.indices)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    triton = "installed" if triton_importable() else "missing"
    with pytest.raises(ConfigError, match=rf"needs a CUDA device and Triton installed \(here: cpu, Triton {triton}\); "
                                          r"kernel='auto' falls back to torch's matrix product"):
        group("torch", keys, "ip", backend_options={"kernel": "triton"})


def test_an_empty_group_gives_empty_candidates_and_zero_values():
    keys = torch.randn(2, 1, 4)
    store = layout_for("torch", keys, "ip")
    empty = MemoryGroup(store.specs["attention"], store, torch.device("cpu"), torch.float32)
    found = empty.search_positions(torch.randn(2, 3, 4), 5)
    assert found.scores.dtype == torch.float32 and torch.isneginf(found.scores).all()
    assert found.positions.dtype == torch.int64 and found.positions.shape == (2, 3, 5) and not found.positions.any()
    values = empty.gather_values(found.positions)
    assert values.shape == (2, 3, 5, 4) and not values.any()


def test_values_are_gathered_right_after_the_group_grows():
    keys = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(17))
    memory = group("torch", keys, "ip")  # values are keys * 2
    positions = torch.tensor([[[0, 9]], [[9, 0]]])
    assert torch.equal(memory.gather_values(positions)[1, 0, 0], keys[1, 9] * 2)
    more = torch.randn(2, 3000, 4, generator=torch.Generator().manual_seed(18))  # past the first capacity
    memory.add(torch.arange(11, 3011), more, more * 2, torch.zeros(3000, 2, dtype=torch.int64), heads_first=True)
    late = torch.tensor([[[3009, 0]], [[0, 3009]]])
    gathered = memory.gather_values(late)
    assert torch.equal(gathered[0, 0, 0], more[0, 2999] * 2) and torch.equal(gathered[1, 0, 1], more[1, 2999] * 2)


def test_token_id_slots_past_the_items_found_hold_token_zero():
    keys = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(19))
    store = StoreLayout({"lm": GroupSpec(1, 4, None, "l2")}, "torch")
    memory = MemoryGroup(store.specs["lm"], store, torch.device("cpu"), torch.float32)
    memory.add(torch.arange(2), keys, torch.tensor([7, 8]), torch.zeros(2, 2, dtype=torch.int64), heads_first=True)
    found = memory.search(torch.randn(1, 3, 4), 4)
    assert sorted(found.values[0, 0, :2].tolist()) == [7, 8] and (found.values[..., 2:] == 0).all()


def test_cluster_search_leaves_l2_groups_exact():
    keys = torch.randn(1, 600, 8, generator=torch.Generator().manual_seed(20)) * torch.rand(1, 600, 1) * 3
    queries = torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(21))
    clustered = {"dtype": "float32", "search": "clusters", "exact_below": 64, "page_size": 16, "probe_pages": 2,
                 "min_queries": 1}
    asked = group("torch", keys, "l2", backend_options=clustered).search_positions(queries, 5)
    assert_same(asked, group("torch", keys, "l2").search_positions(queries, 5))


def test_faiss_backend_options_reach_every_head_index():
    keys = torch.randn(2, 30, 4, generator=torch.Generator().manual_seed(22))
    memory = group("faiss-hnsw", keys, "ip", backend_options={"m": 8, "ef_search": 16})
    assert [(index.m, index.ef_search) for index in memory.indexes] == [(8, 16), (8, 16)]
