"""`FactBank.retrieve` piece by piece, with no language model: the query's checks, which search each
retrieval method runs and with what, the cosine of facts found only by words, the slot bonus, the
floor, the score's terms computed by hand, touches, the conversation fusion, decay and eviction's
counts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import Clock, words_bank, words_embed

from memlm.errors import ConfigError
from memlm.facts.bank import _hybrid_weight


@pytest.mark.parametrize("query, message", [("   ", "query is empty"), (b"cat", "query must be text"),
                                            ("x" * 100_000, "query is too long")])
def test_a_query_that_cannot_be_one_is_refused_by_name(query, message):
    bank = words_bank()
    bank.learn("the user plays the cello")
    with pytest.raises(ConfigError, match=f"^{message}"):
        bank.retrieve(query)


@pytest.mark.parametrize("method, runs", [("dense", {"search"}), ("lexical", {"lexical_search"}),
                                          ("hybrid:0.1", {"search", "lexical_search"}),
                                          ("rrf", {"search", "lexical_search"})])
def test_each_method_runs_its_own_searches_with_the_row_and_the_filter(method, runs, monkeypatch):
    bank = words_bank(retrieval=method, min_similarity=-1.0)
    bank.learn("the red kite flies over the hill", row=0)
    bank.learn("the red kite nests in the tall oak", row=1)
    bank.learn("a red kite was seen by everyone")  # no row: every row's
    called: dict[str, dict] = {}
    for name in ("search", "lexical_search"):
        original = getattr(bank.store, name)

        def spy(*args, name=name, original=original, **kwargs):
            called[name] = {**kwargs, "pool": args[2]}
            return original(*args, **kwargs)

        monkeypatch.setattr(bank.store, name, spy)
    not_everyone = lambda fact: "everyone" not in fact.text  # noqa: E731
    found = bank.retrieve("red kite", 5, row=1, accept=not_everyone)
    assert set(called) == runs
    assert all(kwargs["row"] == 1 and kwargs["accept"] is not_everyone for kwargs in called.values())
    assert [r.fact.text for r in found] == ["the red kite nests in the tall oak"]
    assert {kwargs["pool"] for kwargs in called.values()} == {32}  # max(4k, 32) candidates a side
    bank.retrieve("red kite", 10)
    assert {kwargs["pool"] for kwargs in called.values()} == {40}


def test_a_fact_found_only_by_its_words_keeps_its_own_cosine():
    bank = words_bank(retrieval="lexical", min_similarity=-1.0)
    bank.learn("the user keeps bees in Tartu")
    bank.learn("bees make honey in summer and bees sleep in winter")
    found = {r.fact.text: r for r in bank.retrieve("bees in Tartu", 2)}
    query = words_embed(["bees in Tartu"])[0]
    for text, hit in found.items():
        assert hit.similarity == pytest.approx(float(words_embed([text])[0] @ query), abs=1e-5)
        assert hit.lexical > 0
    dense = words_bank(retrieval="dense", min_similarity=-1.0)
    dense.learn("the user keeps bees in Tartu")
    [hit] = dense.retrieve("bees in Tartu", 1)
    assert hit.lexical == 0.0 and hit.relevance == pytest.approx(hit.similarity)


def test_the_score_is_the_configured_blend_of_relevance_decayed_importance_and_recency():
    clock = Clock()
    bank = words_bank(clock=clock, retrieval="dense", min_similarity=-1.0, similarity_weight=0.7,
                      importance_weight=0.3, recency_weight=0.5, recency_half_life=100.0, importance_half_life=50.0)
    fact = bank.learn("the user plays the cello", importance=2.0).fact
    [fresh] = bank.retrieve("cello", 1, touch=False)
    assert fresh.importance == pytest.approx(2.0)  # used just now: no decay, recency 1
    assert fresh.score == pytest.approx(0.7 * fresh.relevance + 0.3 * 2.0 + 0.5)
    clock.now += 100.0
    [later] = bank.retrieve("cello", 1)
    assert later.importance == pytest.approx(2.0 * 0.5 ** 2) and later.fact.id == fact.id
    assert later.score == pytest.approx(0.7 * later.relevance + 0.3 * 0.5 + 0.5 * 0.5)
    assert bank.decayed_importance(bank.store.get(fact.id), now=clock.now + 50.0) == pytest.approx(1.0)


def test_a_relevance_at_the_floor_is_kept_and_min_similarity_overrides_the_config():
    bank = words_bank(retrieval="dense", min_similarity=0.99)
    bank.learn("the user plays the cello")
    relevance = float(words_embed(["cello"])[0] @ words_embed(["the user plays the cello"])[0])
    assert bank.retrieve("cello") == []
    assert len(bank.retrieve("cello", min_similarity=relevance)) == 1  # at the floor: kept
    assert bank.retrieve("cello", min_similarity=relevance + 1e-4) == []


def test_a_fact_that_fills_the_asked_slot_gets_the_slot_bonus_after_the_fusion():
    bank = words_bank(retrieval="dense", min_similarity=-1.0, importance_weight=0.0, slot_bonus=0.5)
    dog = bank.learn("The user's dog is called Rex.", spoken="My dog is called Rex.").fact
    cat = bank.learn("The user's cat likes the dog called Rex a lot.").fact
    hits = {r.fact.id: r for r in bank.retrieve("What is my dog called?", 2)}
    assert hits[dog.id].relevance == pytest.approx(hits[dog.id].similarity + 0.5)
    assert hits[cat.id].relevance == pytest.approx(hits[cat.id].similarity)  # another slot: no bonus
    assert list(hits) == [dog.id, cat.id]
    tom = bank.learn("The user's cat is called Tom.", spoken="My cat is called Tom.").fact  # a name, another animal's
    hits = {r.fact.id: r for r in bank.retrieve("What is my dog called?", 3)}
    assert hits[tom.id].relevance == pytest.approx(hits[tom.id].similarity)
    home = bank.learn("The user lives in Oslo.", spoken="I live in Oslo.").fact  # a one-word attribute
    [hit] = bank.retrieve("Where do I live?", 1)
    assert hit.fact.id == home.id and hit.relevance == pytest.approx(hit.similarity + 0.5)


def test_the_floor_applies_to_each_fact_after_the_slot_bonus_reorders_them():
    """A fact under the floor before one lifted over it by the bonus does not end the list."""
    bank = words_bank(retrieval="dense", importance_weight=0.0, slot_bonus=0.5)
    other = bank.learn("He asked what my dog is called").fact  # close in words, no slot filled
    dog = bank.learn("The user's dog is called Rex.", spoken="My dog is called Rex.").fact
    query = "What is my dog called?"
    cosines = {fact.id: float(words_embed([fact.text])[0] @ words_embed([query])[0]) for fact in (other, dog)}
    assert cosines[other.id] > cosines[dog.id]  # the other comes first in the fusion
    floor = (cosines[other.id] + cosines[dog.id] + 0.5) / 2
    assert cosines[other.id] < floor < cosines[dog.id] + 0.5
    assert [r.fact.id for r in bank.retrieve(query, 2, min_similarity=floor)] == [dog.id]


def test_a_fact_beyond_the_dense_pool_found_by_its_words_is_fused_with_its_own_cosine():
    bank = words_bank(retrieval="hybrid:0.1", min_similarity=-1.0, importance_weight=1.0)
    for n in range(36):  # more than the pool of 32 (k = 1), all closer to the query than the last fact
        bank.learn(f"apple banana cherry basket number {n}", importance=0.0)
    rare = bank.learn("apple quokka walrus narwhal ibex", importance=10.0).fact  # ranked first by importance
    query = "apple banana cherry quokka"
    [hit] = bank.retrieve(query, 1)
    cosine = float(words_embed([rare.text])[0] @ words_embed([query])[0])
    assert hit.fact.id == rare.id and hit.similarity == pytest.approx(cosine, abs=1e-5)
    assert hit.lexical > 0 and hit.relevance < cosine + 0.1 + 1e-6  # its cosine, not the pool's lowest, plus words
    lowest_in_pool = min(float(words_embed([f"apple banana cherry basket number {n}"])[0] @ words_embed([query])[0])
                         for n in range(36))
    assert cosine < lowest_in_pool - 0.1  # the test can tell the two apart


def test_retrieval_touches_only_when_asked_and_inside_a_turn_with_the_turn():
    bank = words_bank(min_similarity=-1.0)
    fact = bank.learn("the user plays the cello").fact
    bank.retrieve("cello", touch=False)
    assert bank.store.get(fact.id).use_count == 0
    with bank.turn():
        bank.retrieve("cello")
        assert bank.store.get(fact.id).use_count == 0  # written with the turn's facts
    assert bank.store.get(fact.id).use_count == 1


def test_conversation_fusion_weighs_turn_words_and_lifts_each_run_by_its_best():
    bank = words_bank(turn_lexical_weight=1.0, run_weight=0.5)
    facts = {1: SimpleNamespace(context="a turn", run_id="r1"), 2: SimpleNamespace(context=None, run_id="r1"),
             3: SimpleNamespace(context="a turn", run_id=None), 4: SimpleNamespace(context=None, run_id=None),
             6: SimpleNamespace(context="a turn", run_id=None)}
    fused = [(1, 0.30), (2, 0.50), (3, 0.20), (4, 0.25), (6, 0.05)]
    bm25 = {1: 0.2, 2: 0.3, 3: 0.4}  # scores below 1; fact 2 is no turn; fact 6 (a turn) has no word in common
    result = dict(bank._conversation_fusion(fused, facts, bm25, "hybrid:0.25"))
    turn_1, turn_3 = 0.30 + 0.75 * 0.2 / 0.4, 0.20 + 0.75 * 0.4 / 0.4  # (1.0 - 0.25) x bm25 / best, turns only
    best_r1 = max(turn_1, 0.50)
    assert result == pytest.approx({1: turn_1 + 0.5 * best_r1, 2: 0.50 + 0.5 * best_r1, 3: turn_3, 4: 0.25,
                                    6: 0.05})
    order = [fact_id for fact_id, _ in bank._conversation_fusion(fused, facts, bm25, "hybrid:0.25")]
    assert order == sorted(result, key=lambda fact_id: -result[fact_id])
    tied = bank._conversation_fusion([(7, 0.5), (5, 0.5)], {5: facts[4], 7: facts[4]}, {}, "hybrid:0.25")
    assert tied == [(5, 0.5), (7, 0.5)]  # ties by id
    assert bank._conversation_fusion(fused, facts, {}, "hybrid:0.25") != fused  # no words: runs still lift
    assert bank._conversation_fusion(fused, facts, bm25, "dense") is fused  # one side alone: untouched
    same = words_bank(turn_lexical_weight=0.25, run_weight=0.0)._conversation_fusion(fused, facts, bm25, "hybrid:0.25")
    assert same == sorted(fused, key=lambda pair: -pair[1])  # the turn weight equal to the method's: no extra


def test_hybrid_weight_reads_the_method():
    assert _hybrid_weight("hybrid:0.35") == pytest.approx(0.35)
    assert _hybrid_weight("dense") is None and _hybrid_weight("rrf") is None


def test_evict_counts_what_it_removed():
    bank = words_bank()
    bank.learn("alpha fact", importance=0.9)
    assert bank.evict("default") == 0  # no capacity
    bank.config.capacity = 1
    assert bank.evict("default") == 0  # at capacity exactly
    bank.config.capacity = 5
    bank.learn("beta fact", importance=0.1)
    bank.config.capacity = 1
    assert bank.evict("default") == 1 and [f.text for f in bank.store.facts("default")] == ["alpha fact"]
    assert np.isfinite(bank.decayed_importance(bank.store.facts("default")[0]))
