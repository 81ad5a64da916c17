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


def test_option_errors_name_the_option_and_the_choices():
    with pytest.raises(ConfigError, match=r"kernel must be one of \('torch', 'triton', 'auto'\), got 'cuda'"):
        ClusterSearch.from_options({"kernel": "cuda"})
    with pytest.raises(ConfigError, match=r"search must be one of \('clusters', 'exact'\), got 'fast'"):
        ClusterSearch.from_options({"search": "fast"})
    options = {"search": "clusters", "page_size": 8, "other": 1}
    assert ClusterSearch.from_options(options).page_size == 8 and options == {"other": 1}  # the rest stay


def test_clusters_apply_above_exact_below_items_from_min_queries_queries():
    search = ClusterSearch(search="clusters", exact_below=100, min_queries=4)
    assert search.applies(101, 4) and search.applies(5000, 40)
    assert not search.applies(100, 4)  # at most exact_below items: exact
    assert not search.applies(101, 3)  # fewer than min_queries queries: exact
    assert not ClusterSearch(search="exact", exact_below=1, min_queries=1).applies(10**6, 100)


def test_cluster_state_does_not_depend_on_the_global_random_generator():
    """Two indexes over the same keys order them identically whatever torch's global generator did
    in between: k-means and its sample draw from the index's own generator."""
    keys = torch.randn(1, 600, 8, generator=torch.Generator().manual_seed(14))
    orders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        index = ClusterIndex(ClusterSearch(search="clusters", page_size=8, exact_below=50, min_queries=1))
        index.refresh(keys)
        orders.append((index.centroids.clone(), index.order.clone()))
    assert torch.equal(orders[0][0], orders[1][0]) and torch.equal(orders[0][1], orders[1][1])
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(3)
    assert torch.equal(kmeans(keys, 16, 3, generator), kmeans(keys, 16, 3, torch.Generator().manual_seed(0)))


def test_centroids_are_trained_again_once_the_items_grow_fourfold():
    keys = torch.randn(1, 1000, 8, generator=torch.Generator().manual_seed(15))
    index = ClusterIndex(ClusterSearch(search="clusters", page_size=8, exact_below=10, min_queries=1))
    index.refresh(keys[:, :200])
    first = index.centroids
    assert index.trained_at == 200 and first.shape[1] == 16  # at least 16 clusters, even for few items
    index.refresh(keys[:, :799])
    assert index.centroids is first and index.trained_at == 200  # below 4x: new keys are assigned only
    assert index.assignments.shape[1] == 799
    index.refresh(keys[:, :800])
    assert index.centroids is not first and index.trained_at == 800  # 4x: trained anew
    assert index.ordered == 800 and index.assignments.shape[1] == 800


def test_a_tail_shorter_than_k_is_searched_whole():
    """Fewer items appended since the ordering than asked for: all of them are candidates, none
    invented past the limit."""
    keys = torch.randn(1, 300, 8, generator=torch.Generator().manual_seed(16))
    group = group_with(keys, search="clusters", page_size=8, probe_pages=40, exact_below=50, min_queries=1)
    queries = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(17))
    group.search_positions(queries, 8)  # orders the 300
    add(group, queries[0, :1].expand(1, 2, -1) * 100, first_id=301)  # 2 new items, k = 8
    found = group.search_positions(queries[:, :1], 8)
    assert {300, 301} <= set(found.positions[0, 0].tolist())
    assert (found.positions < 302).all() and torch.isfinite(found.scores).all()


def test_assign_picks_the_nearest_centroid_by_euclidean_distance():
    generator = torch.Generator().manual_seed(18)
    points, centroids = torch.randn(2, 300, 8, generator=generator), torch.randn(2, 12, 8, generator=generator) * 2
    assert torch.equal(assign(points, centroids), torch.cdist(points, centroids).argmin(-1))


def test_kmeans_is_lloyds_algorithm_seeded_from_its_generators_points():
    """A reference Lloyd iteration: start from the points the generator draws, move each centroid to
    its members' mean, and leave one whose cluster emptied where it was (two start points on the same
    outlier: the first takes both, the second's cluster is empty and its centroid stays out there)."""
    generator = torch.Generator().manual_seed(19)
    points = torch.randn(1, 60, 4, generator=generator)
    points[0, 10] = points[0, 11] = 40.0  # the first two start points, on one outlier
    start = torch.randperm(60, generator=torch.Generator().manual_seed(5))[:6]  # 11, 10, 23, 3, 1, 35
    centroids = points[:, start].clone()
    for _ in range(3):
        nearest = torch.cdist(points, centroids).argmin(-1)[0]
        for cluster in range(6):
            members = points[0, nearest == cluster]
            if len(members):
                centroids[0, cluster] = members.mean(0)
    torch.testing.assert_close(kmeans(points, 6, 3, torch.Generator().manual_seed(5)), centroids)
