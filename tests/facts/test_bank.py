"""`FactBank`: learning (duplicates, usefulness), ranking and forgetting, with no language model."""

from __future__ import annotations

import pytest
from helpers import Clock, words_bank, words_embed


def test_exact_duplicates_are_rejected_ignoring_case_spacing_and_final_punctuation(store):
    bank = words_bank(store=store)
    assert bank.learn("The user's dog is called Rex.").status == "stored"
    again = bank.learn("  the USER'S dog is called   rex!")
    assert again.status == "duplicate" and "exact" in again.reason
    assert bank.store.count("default") == 1


def test_near_duplicates_are_rejected_at_the_configured_cosine(store):
    fact, near = "Ada lives in Lisbon near the river", "Ada lives in Lisbon near the river Tagus"
    cosine = float(words_embed([fact])[0] @ words_embed([near])[0])
    strict = words_bank(duplicate_threshold=min(1.0, cosine + 0.01))
    strict.learn(fact)
    assert strict.learn(near).status == "stored"
    loose = words_bank(store=store, duplicate_threshold=cosine - 0.01)
    loose.learn(fact)
    result = loose.learn(near)
    assert result.status == "duplicate" and "near-duplicate" in result.reason


def test_facts_below_the_importance_threshold_are_not_stored(store):
    improvements = {"useful fact about zebras": 0.6, "obvious fact about water": 0.02}
    bank = words_bank(store=store, measure=improvements.__getitem__, min_importance=0.1,
                      category_weights={"trivia": 0.1})
    stored = bank.learn("useful fact about zebras")
    assert stored.stored and stored.importance == pytest.approx(0.6)
    rejected = bank.learn("obvious fact about water")
    assert rejected.status == "not useful" and rejected.fact is None
    # the category multiplier scales importance: 0.6 * 0.1 < 0.1
    assert bank.learn("useful fact about zebras", category="trivia", user="other").status == "not useful"
    assert bank.store.count("default") == 1


def test_ranking_blends_similarity_and_importance(store):
    bank = words_bank(store=store, importance_weight=0.0)
    bank.learn("red apple pie recipe", importance=0.1)
    bank.learn("green apple tree in the garden", importance=5.0)
    by_similarity = [r.fact.text for r in bank.retrieve("red apple pie", 2, min_similarity=-1)]
    assert by_similarity[0] == "red apple pie recipe"
    bank.config.importance_weight = 1.0
    blended = bank.retrieve("red apple pie", 2, min_similarity=-1)
    assert blended[0].fact.text == "green apple tree in the garden"
    assert blended[0].score > blended[1].score
    assert blended[0].score == pytest.approx(blended[0].relevance + 5.0)


def test_recency_can_enter_the_blend(store):
    clock = Clock()
    bank = words_bank(store=store, clock=clock, importance_weight=0.0, recency_weight=1.0, recency_half_life=100.0)
    bank.learn("meeting on monday in room one")
    clock.now += 1000
    bank.learn("meeting on monday in room two")
    hits = bank.retrieve("meeting on monday", 2, min_similarity=-1)
    assert hits[0].fact.text == "meeting on monday in room two"


def test_retrieval_marks_facts_as_used(store):
    bank = words_bank(store=store)
    fact = bank.learn("the user plays the cello").fact
    bank.retrieve("cello")
    assert bank.store.get(fact.id).use_count == 1


def test_capacity_evicts_lowest_importance_first(store):
    bank = words_bank(store=store, capacity=2)
    bank.learn("alpha fact", importance=0.9)
    bank.learn("beta fact", importance=0.1)
    bank.learn("gamma fact", importance=0.5)
    assert sorted(f.text for f in bank.store.facts("default")) == ["alpha fact", "gamma fact"]
    assert bank.store.history(2)[-1].actor == "eviction"


def test_capacity_with_oldest_policy_evicts_the_oldest(store):
    clock = Clock()
    bank = words_bank(store=store, clock=clock, capacity=2, eviction="oldest")
    for text in ("alpha fact", "beta fact", "gamma fact"):
        clock.now += 1
        bank.learn(text, importance=1.0 if text != "alpha fact" else 9.0)
    assert sorted(f.text for f in bank.store.facts("default")) == ["beta fact", "gamma fact"]


def test_importance_decays_with_disuse_and_decides_eviction(store):
    clock = Clock()
    bank = words_bank(store=store, clock=clock, capacity=2, importance_half_life=10.0)
    old = bank.learn("old but once important", importance=4.0).fact
    clock.now += 100  # ten half-lives: 4.0 -> ~0.004
    assert bank.decayed_importance(bank.store.get(old.id)) == pytest.approx(4.0 / 1024)
    bank.learn("fresh fact one", importance=1.0)
    bank.learn("fresh fact two", importance=1.0)
    assert "old but once important" not in [f.text for f in bank.store.facts("default")]
