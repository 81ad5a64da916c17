"""How dense and lexical rankings become one (facts/ranking.py): each fusion's scores and order, by hand."""

from __future__ import annotations

import pytest

from memlm.errors import ConfigError
from memlm.facts.ranking import FUSIONS, check_fusion, fuse_rankings

DENSE = [(10, 0.9), (20, 0.8), (30, 0.7)]
LEXICAL = [(30, 5.0), (40, 4.0)]


@pytest.mark.parametrize("method", [*FUSIONS, "hybrid:0", "hybrid:10", "hybrid:2.5"])
def test_every_listed_fusion_and_hybrid_weights_from_0_to_10_are_accepted(method):
    assert check_fusion(method) == method


@pytest.mark.parametrize("method", ["hybrid:-0.1", "hybrid:10.5", "hybrid:x", "hybrid:", "hybrid", "bm25", "Dense",
                                    " rrf", "hybrid:0.1:2"])
def test_anything_else_is_refused_with_the_choices_named(method):
    message = ("bank: retrieval fusion must be dense, lexical, rrf or hybrid:W (0 <= W <= 10), "
               f"got {method!r}")
    with pytest.raises(ConfigError) as refused:
        check_fusion(method)
    assert str(refused.value) == message


def test_dense_and_lexical_return_a_new_list_of_their_own_ranking():
    for method, ranking in (("dense", DENSE), ("lexical", LEXICAL)):
        fused = fuse_rankings(DENSE, LEXICAL, method)
        assert fused == ranking and fused is not ranking


def test_rrf_sums_one_over_61_plus_the_rank_and_breaks_ties_by_id():
    fused = fuse_rankings(DENSE, LEXICAL, "rrf")
    # ranks count from 0: 1 / (60 + 0 + 1) for the first of each list; 30 is in both, 20 and 40 tie
    expected = [(30, 1 / 63 + 1 / 61), (10, 1 / 61), (20, 1 / 62), (40, 1 / 62)]
    assert [item for item, _ in fused] == [item for item, _ in expected]
    assert [score for _, score in fused] == pytest.approx([score for _, score in expected], rel=1e-12)
    reversed_ties = fuse_rankings([(40, 0.9)], [(20, 1.0)], "rrf")
    assert [item for item, _ in reversed_ties] == [20, 40]  # equal scores: the smaller id first


def test_hybrid_adds_w_times_bm25_over_the_querys_best_bm25_to_the_cosine():
    fused = dict(fuse_rankings(DENSE, LEXICAL, "hybrid:0.5"))
    # best BM25 is 5.0; 40 is found only lexically and has no known cosine: the lowest dense cosine (0.7)
    assert fused == pytest.approx({10: 0.9, 20: 0.8, 30: 0.7 + 0.5 * 5.0 / 5.0, 40: 0.7 + 0.5 * 4.0 / 5.0},
                                  rel=1e-12)
    assert [item for item, _ in fuse_rankings(DENSE, LEXICAL, "hybrid:0.5")] == [30, 40, 10, 20]


def test_hybrid_takes_a_lexical_only_hits_own_cosine_when_given_else_the_floor():
    fused = dict(fuse_rankings(DENSE, LEXICAL, "hybrid:2", cosine={40: 0.1}))
    assert fused[40] == pytest.approx(0.1 + 2 * 4.0 / 5.0) and fused[30] == pytest.approx(0.7 + 2.0)
    fused = dict(fuse_rankings(DENSE, LEXICAL, "hybrid:2", cosine={99: 0.1}))
    assert fused[40] == pytest.approx(0.7 + 2 * 4.0 / 5.0)  # not in the mapping: the floor
    # with no dense hits at all the floor is 0
    assert fuse_rankings([], [(5, 2.0), (6, 1.0)], "hybrid:0.3") == [(5, pytest.approx(0.3)),
                                                                       (6, pytest.approx(0.15))]


def test_hybrid_without_lexical_evidence_keeps_the_dense_order_and_scores():
    assert fuse_rankings(DENSE, [], "hybrid:0.3") == DENSE
    # BM25 scores of 0 (no query word in any fact) add nothing and divide by nothing
    assert dict(fuse_rankings(DENSE, [(20, 0.0), (50, 0.0)], "hybrid:0.3")) == {10: 0.9, 20: 0.8, 30: 0.7,
                                                                                 50: 0.7}


def test_hybrid_breaks_ties_by_id():
    fused = fuse_rankings([(7, 0.5), (3, 0.5)], [(9, 1.0)], "hybrid:0", cosine={9: 0.5})
    assert [item for item, _ in fused] == [3, 7, 9]


def test_hybrid_scales_bm25_scores_below_one_too():
    fused = dict(fuse_rankings([(1, 0.4), (2, 0.3)], [(2, 0.5), (1, 0.25)], "hybrid:0.2"))
    assert fused == pytest.approx({1: 0.4 + 0.2 * 0.25 / 0.5, 2: 0.3 + 0.2})
