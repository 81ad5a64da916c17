"""Cluster-ordered page search (`memlm.store.clusters`): exact when it reads every page, k-means that
separates clusters, state that follows appends and removals, nothing past the searched items, the
right pages read when keys cluster, and exact search where clusters do not pay."""

from __future__ import annotations

import pytest
import torch

from memlm.errors import ConfigError
from memlm.store import GroupSpec, StoreLayout
from memlm.store.clusters import ClusterIndex, ClusterSearch, assign, cluster_search, kmeans
from memlm.store.group import MemoryGroup


def group_with(keys: torch.Tensor, **options) -> MemoryGroup:
    """A torch-backed attention group holding `keys` (heads, N, dim), float32 search."""
    heads, count, dim = keys.shape
    layout = StoreLayout({"attention": GroupSpec(heads, dim, dim)}, "torch", {"dtype": "float32", **options})
    group = MemoryGroup(layout.specs["attention"], layout, torch.device("cpu"), torch.float32)
    add(group, keys, first_id=1)
    return group


def add(group: MemoryGroup, keys: torch.Tensor, first_id: int) -> None:
    count = keys.shape[1]
    origins = torch.stack([torch.zeros(count, dtype=torch.int64), torch.arange(count)], dim=1)
    group.add(torch.arange(first_id, first_id + count), keys, keys, origins, heads_first=True)


def clustered_keys(clusters: int, per_cluster: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys around `clusters` centres, shuffled (neighbouring items are unrelated), and the centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator) * 3
    keys = centres.repeat_interleave(per_cluster, 0) + 0.3 * torch.randn(clusters * per_cluster, dim,
                                                                         generator=generator)
    return keys[torch.randperm(len(keys), generator=generator)][None], centres


def test_reading_every_page_is_exact_search():
    keys = torch.randn(2, 3000, 16, generator=torch.Generator().manual_seed(1))
    queries = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(2))
    exact = group_with(keys, search="exact").search_positions(queries, 8, limit=2500)
    clusters = group_with(keys, search="clusters", page_size=32, probe_pages=94, exact_below=100, min_queries=1)
    found = clusters.search_positions(queries, 8, limit=2500)  # 94 pages of 32 cover the 3,000 items
    assert torch.equal(found.positions, exact.positions)
    torch.testing.assert_close(found.scores, exact.scores)


def test_kmeans_clusters_hold_keys_of_one_true_cluster():
    keys, centres = clustered_keys(8, 100, 16, seed=3)
    centroids = kmeans(keys, 16, 10, torch.Generator().manual_seed(0))  # twice as many, as the store uses
    labels = assign(keys, centroids)[0]
    truth = assign(keys, centres[None])[0]
    owners = {}
    for label, true in zip(labels.tolist(), truth.tolist(), strict=True):
        owners.setdefault(label, set()).add(true)
    assert all(len(true) == 1 for true in owners.values())  # no k-means cluster mixes two true ones
    assert len(owners) > 8  # and they are used, not collapsed


def test_state_follows_appends_and_removals():
    keys = torch.randn(1, 4000, 8, generator=torch.Generator().manual_seed(5))
    queries = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(6))
    options = {"search": "clusters", "page_size": 16, "probe_pages": 300, "exact_below": 500, "min_queries": 1}
    group = group_with(keys[:, :1000], **options)
    for first in (1000, 1200, 2500):  # appends below and past exact_below since the last ordering
        group.search_positions(queries, 4)
        add(group, keys[:, first: first + (200 if first == 1000 else 1300 if first == 1200 else 1500)], first + 1)
    index = group._clusters
    assert len(group) == 4000 and index.ordered <= 4000
    found = group.search_positions(queries, 4)
    assert index.ordered >= 4000 - options["exact_below"]  # reordered rather than a tail past exact_below
    exact = group_with(keys, search="exact").search_positions(queries, 4)
    # 300 of 250 pages: every key is read, so page order or tail, the answer is the exact one
    assert torch.equal(found.positions, exact.positions)

    removed = group.remove(torch.arange(1, 2001))  # the oldest half: every position shifts
    assert removed == 2000
    after = group.search_positions(queries, 4)
    exact = group_with(keys[:, 2000:], search="exact").search_positions(queries, 4)
    assert torch.equal(after.positions, exact.positions)


def test_the_tail_appended_since_ordering_is_searched_too():
    keys = torch.randn(1, 3000, 8, generator=torch.Generator().manual_seed(11))
    group = group_with(keys, search="clusters", page_size=16, probe_pages=2, exact_below=1000, min_queries=1)
    queries = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(12))
    group.search_positions(queries, 4)  # orders the 3,000
    planted = queries[0, :1].expand(1, 5, -1) * 100  # newer items that every first query must find
    add(group, planted, first_id=3001)
    found = group.search_positions(queries[:, :1], 5)
    assert group._clusters.ordered == 3000  # 5 new items: still a tail, not reordered
    assert sorted(found.positions[0, 0].tolist()) == list(range(3000, 3005))


def test_items_past_the_limit_are_never_returned():
    keys = torch.randn(1, 2000, 8, generator=torch.Generator().manual_seed(7))
    keys[:, 1900:] *= 50  # the newest items would win every search
    group = group_with(keys, search="clusters", page_size=64, probe_pages=4, exact_below=10, min_queries=1)
    queries = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(8))
    found = group.search_positions(queries, 16, limit=1900)
    assert found.positions.shape == (1, 40, 16)
    assert (found.positions[torch.isfinite(found.scores)] < 1900).all()
    assert torch.isfinite(found.scores).all()


def test_pages_of_the_right_cluster_are_the_ones_read():
    # Keys around 32 centres in random insertion order: queries aimed at one centre must find its
    # exact top-k reading 4 pages of 32 out of 64 (1/16 of the keys).
    keys, centres = clustered_keys(32, 64, 32, seed=9)
    generator = torch.Generator().manual_seed(10)
    aims = torch.randint(32, (40,), generator=generator)
    queries = (centres[aims] + 0.3 * torch.randn(40, 32, generator=generator))[None]
    exact = group_with(keys, search="exact").search_positions(queries, 8)
    clusters = group_with(keys, search="clusters", page_size=32, probe_pages=4, exact_below=100, min_queries=1)
    found = clusters.search_positions(queries, 8)
    recall = (found.positions.unsqueeze(-1) == exact.positions.unsqueeze(-2)).any(-1).float().mean()
    assert recall > 0.9


def test_few_queries_and_small_stores_search_exactly():
    keys = torch.randn(1, 9000, 8, generator=torch.Generator().manual_seed(10))
    clusters, exact = group_with(keys, search="clusters", probe_pages=1), group_with(keys, search="exact")
    decode = torch.randn(1, 3, 8)  # a decode step: fewer than min_queries
    assert torch.equal(clusters.search_positions(decode, 8).positions, exact.search_positions(decode, 8).positions)
    segment = torch.randn(1, 64, 8)
    limit = 8000  # at most exact_below items
    assert torch.equal(clusters.search_positions(segment, 8, limit).positions,
                       exact.search_positions(segment, 8, limit).positions)
    assert not torch.equal(clusters.search_positions(segment, 8).positions,
                           exact.search_positions(segment, 8).positions)


@pytest.mark.parametrize("options", [{"search": "fast"}, {"page_size": 0}, {"probe_pages": -1},
                                     {"min_queries": 2.5}, {"exact_below": True}])
def test_bad_search_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        ClusterSearch.from_options(dict(options))


def test_cluster_search_pads_scores_when_candidates_are_few():
    keys = torch.randn(1, 100, 8, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    index = ClusterIndex(ClusterSearch(page_size=16, probe_pages=1, exact_below=1, min_queries=1))
    group = group_with(keys, search="exact")
    scores, positions = cluster_search(index, keys.clone(), keys, queries, 32, 100, group._exact_search)
    assert scores.shape == positions.shape == (1, 8, 16)  # one page of 16 candidates
    # Reference: each query reads the page whose mean it scores highest; it gets that page's items,
    # best first, with their exact scores, then -inf (position 0) for the page's empty slots.
    chosen = (queries[0] @ index.means[0].T).argmax(-1)  # (8,)
    padded = 0
    for query, page in enumerate(chosen.tolist()):
        members = index.order[0, page * 16:(page + 1) * 16]
        members = members[(members >= 0) & (members < 100)]
        expected = (keys[0, members] @ queries[0, query]).sort(descending=True).values
        found = len(members)
        torch.testing.assert_close(scores[0, query, :found], expected)
        assert sorted(positions[0, query, :found].tolist()) == sorted(members.tolist())
        assert torch.isneginf(scores[0, query, found:]).all() and (positions[0, query, found:] == 0).all()
        padded += 16 - found
    assert padded > 0  # some page had empty slots: the padding was exercised


@pytest.mark.parametrize("backend_options", [{"search": "fast"}, {"probe_pages": 0}])
def test_knn_config_rejects_bad_search_options(backend_options):
    from memlm.memories.knn import KnnConfig
    with pytest.raises(ConfigError, match=next(iter(backend_options))):
        KnnConfig(backend_options=backend_options).validate()


def test_knn_config_rejects_search_options_on_faiss():
    from memlm.memories.knn import KnnConfig
    KnnConfig(backend_options={"search": "exact"}).validate()  # torch: fine
    with pytest.raises(ConfigError, match="torch backend only"):
        KnnConfig(backend="faiss-flat", backend_options={"search": "exact"}).validate()


def test_a_store_smaller_than_the_cluster_count_still_searches():
    keys = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(13))
    queries = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(14))
    clusters = group_with(keys, search="clusters", page_size=2, probe_pages=8, exact_below=1, min_queries=1)
    exact = group_with(keys, search="exact").search_positions(queries, 3)
    assert torch.equal(clusters.search_positions(queries, 3).positions, exact.positions)
