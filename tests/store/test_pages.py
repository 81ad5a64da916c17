"""Page-selected search (`memlm.store.pages`): exact when it reads every page, bounds that hold,
summaries that follow appends and removals, nothing past the searched items, the right pages read
when keys cluster by page, and exact search where pages do not pay."""

from __future__ import annotations

import pytest
import torch

from memlm.errors import ConfigError
from memlm.store import GroupSpec, StoreLayout
from memlm.store.kv_store import MemoryGroup
from memlm.store.pages import PageSearch, PageSummaries, page_search


def group_with(keys: torch.Tensor, **options) -> MemoryGroup:
    """A torch-backed attention group holding `keys` (heads, N, dim), float32 search."""
    heads, count, dim = keys.shape
    layout = StoreLayout({"attention": GroupSpec(heads, dim, dim)}, "torch", {"dtype": "float32", **options})
    group = MemoryGroup(layout.specs["attention"], layout, torch.device("cpu"), torch.float32)
    origins = torch.stack([torch.zeros(count, dtype=torch.int64), torch.arange(count)], dim=1)
    group.add(torch.arange(1, count + 1), keys, keys, origins, heads_first=True)
    return group


def test_reading_every_page_is_exact_search():
    keys = torch.randn(2, 3000, 16, generator=torch.Generator().manual_seed(1))
    queries = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(2))
    exact = group_with(keys, search="exact").search_positions(queries, 8, limit=2500)
    pages = group_with(keys, page_size=64, probe_pages=64, query_block=16, exact_below=100)
    found = pages.search_positions(queries, 8, limit=2500)  # 40 pages cover the 2,500 items
    assert torch.equal(found.positions, exact.positions)
    torch.testing.assert_close(found.scores, exact.scores)


def test_page_bounds_hold_for_every_query():
    keys = torch.randn(3, 1000, 8, generator=torch.Generator().manual_seed(3))
    queries = torch.randn(3, 32, 8, generator=torch.Generator().manual_seed(4))
    summaries = PageSummaries(PageSearch(page_size=50, probe_pages=20, query_block=1))
    summaries.refresh(keys)
    bound = (queries.clamp(min=0) @ summaries.maximum[:, :20].transpose(1, 2)
             + queries.clamp(max=0) @ summaries.minimum[:, :20].transpose(1, 2))  # (H, Q, pages)
    best_in_page = (queries @ keys.transpose(1, 2)).unflatten(-1, (20, 50)).amax(-1)
    assert (bound >= best_in_page - 1e-5).all()
    assert (bound - best_in_page).max() > 0.1  # a bound, not the exact value: the test can tell them apart


def test_summaries_follow_appends_and_removals():
    keys = torch.randn(2, 1000, 8, generator=torch.Generator().manual_seed(5))
    grown = PageSummaries(PageSearch(page_size=64))
    for end in (10, 64, 65, 300, 1000):  # partial, exact and growing pages, and a reallocation
        grown.refresh(keys[:, :end])
    fresh = PageSummaries(PageSearch(page_size=64))
    fresh.refresh(keys)
    pages = -(-1000 // 64)
    assert torch.equal(grown.maximum[:, :pages], fresh.maximum[:, :pages])
    assert torch.equal(grown.minimum[:, :pages], fresh.minimum[:, :pages])

    group = group_with(keys, page_size=64, probe_pages=100, query_block=16, exact_below=10)
    queries = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(6))
    group.search_positions(queries, 4)  # builds the summaries
    removed = group.remove(torch.arange(1, 501))  # the oldest half: every position shifts
    assert removed == 500
    after = group.search_positions(queries, 4)
    exact = group_with(keys[:, 500:], search="exact").search_positions(queries, 4)
    assert torch.equal(after.positions, exact.positions)


def test_items_past_the_limit_are_never_returned():
    keys = torch.randn(1, 2000, 8, generator=torch.Generator().manual_seed(7))
    keys[:, 1900:] *= 50  # the newest items would win every search
    group = group_with(keys, page_size=64, probe_pages=4, query_block=8, exact_below=10)
    queries = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(8))  # not a multiple of the block
    found = group.search_positions(queries, 16, limit=1900)
    assert found.positions.shape == (1, 40, 16)
    assert (found.positions[torch.isfinite(found.scores)] < 1900).all()
    assert torch.isfinite(found.scores).all()


def test_pages_holding_the_answers_are_the_ones_read():
    # Keys clustered by page (each page around its own centre, as neighbouring tokens of one passage
    # are): a block of queries aimed at one page must read that page and find the exact top-k,
    # reading 2 of 64 pages.
    generator = torch.Generator().manual_seed(9)
    pages, size, dim = 64, 32, 32
    centres = torch.randn(pages, dim, generator=generator) * 3
    keys = (centres.repeat_interleave(size, 0) + 0.3 * torch.randn(pages * size, dim, generator=generator))[None]
    aims = torch.randint(pages, (8,), generator=generator).repeat_interleave(16)  # 8 blocks of 16 queries
    queries = (centres[aims] + 0.3 * torch.randn(len(aims), dim, generator=generator))[None]
    exact = group_with(keys, search="exact").search_positions(queries, 8)
    found = group_with(keys, page_size=size, probe_pages=2, query_block=16,
                       exact_below=100).search_positions(queries, 8)
    assert torch.equal(found.positions.sort(-1).values, exact.positions.sort(-1).values)
    assert (exact.positions // size == aims.view(1, -1, 1)).all()  # the answers do lie on the aimed pages


def test_few_queries_and_small_stores_search_exactly():
    keys = torch.randn(1, 9000, 8, generator=torch.Generator().manual_seed(10))
    pages, exact = group_with(keys, probe_pages=1), group_with(keys, search="exact")
    decode = torch.randn(1, 3, 8)  # a decode step: fewer queries than two blocks
    assert torch.equal(pages.search_positions(decode, 8).positions, exact.search_positions(decode, 8).positions)
    small = torch.randn(1, 64, 8)
    limit = 8000  # at most exact_below items
    assert torch.equal(pages.search_positions(small, 8, limit).positions,
                       exact.search_positions(small, 8, limit).positions)
    assert not torch.equal(pages.search_positions(small, 8).positions, exact.search_positions(small, 8).positions)


@pytest.mark.parametrize("options", [{"search": "fast"}, {"page_size": 0}, {"probe_pages": -1},
                                     {"query_block": 2.5}, {"exact_below": True}])
def test_bad_page_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        PageSearch.from_options(dict(options))


def test_page_search_pads_scores_when_candidates_are_few():
    keys = torch.randn(1, 100, 8)
    summaries = PageSummaries(PageSearch(page_size=16, probe_pages=1, query_block=4))
    table = keys.clone()
    scores, positions = page_search(summaries, table, keys, torch.randn(1, 8, 8), k=32, limit=100)
    assert scores.shape == positions.shape == (1, 8, 16)  # one page of 16 candidates
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("backend_options", [{"search": "fast"}, {"probe_pages": 0}])
def test_knn_config_rejects_bad_page_options(backend_options):
    from memlm.memories.knn import KnnConfig
    with pytest.raises(ConfigError, match=next(iter(backend_options))):
        KnnConfig(backend_options=backend_options).validate()


def test_knn_config_rejects_page_options_on_faiss():
    from memlm.memories.knn import KnnConfig
    KnnConfig(backend_options={"search": "exact"}).validate()  # torch: fine
    with pytest.raises(ConfigError, match="torch backend only"):
        KnnConfig(backend="faiss-flat", backend_options={"search": "exact"}).validate()
