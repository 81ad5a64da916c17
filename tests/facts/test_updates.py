"""Facts that change: a newer statement of the same slot supersedes the older one (kept in the
history, never retrieved again), facts that merely look alike are kept apart, and facts expire.

The real MiniLM is used where the decision depends on meaning (the similarity check)."""

from __future__ import annotations

import pytest
from helpers import Clock

import memlm
from memlm.facts import FactMemory
from memlm.facts.slots import conflict, find_slot


@pytest.fixture(scope="module")
def memory(module_store):
    return FactMemory(module_store)


@pytest.mark.parametrize("old, new", [
    ("I live in Lisbon.", "I moved to Oslo."),
    ("I live in Lisbon.", "I moved from Lisbon to Oslo last month."),
    ("I live in Lisbon.", "Big news: I moved to Oslo last month."),
    ("My phone number is 555-0100.", "My new number is 555-0199."),
    ("My favourite colour is teal.", "My favourite colour is maroon now."),
    ("I work as a baker.", "I work as a pilot these days."),
    ("My dog is called Rex.", "My dog's name is Biscuit."),
    ("My email is ada@old.example.", "My new email is ada@new.example."),
])
def test_an_update_supersedes_the_old_fact(memory, old, new):
    user = f"u{abs(hash((old, new))) % 10**8}"
    first = memory.add(old, user_id=user)["results"][0]
    result = memory.add(new, user_id=user)["results"][0]
    assert result["event"] == "UPDATE" and result["previous_ids"] == [first["id"]], result
    assert "same slot" in result["reason"]
    live = memory.get_all(user_id=user)["results"]
    assert [f["id"] for f in live] == [result["id"]]
    # never retrieved again, whatever the query
    for query in (old, new, "Where do I live? What is my number? What's my dog called?"):
        assert first["id"] not in [h["id"] for h in memory.search(query, user_id=user, threshold=-1)["results"]]
    # nothing is lost: the old fact is kept, marked, and its history says why
    kept = memory.get(first["id"], user_id=user)
    assert kept["status"] == "superseded" and kept["superseded_by"] == result["id"]
    history = memory.history(first["id"], user_id=user)
    assert [h["event"] for h in history] == ["ADD", "SUPERSEDE"]
    assert history[-1]["new_memory"] == result["memory"] and "same slot" in history[-1]["reason"]
    assert [f["id"] for f in memory.get_all(user_id=user, include_superseded=True)["results"]] == [
        first["id"], result["id"]]


@pytest.mark.parametrize("old, new", [
    ("My dog is called Rex.", "My cat is called Tom."),  # two pets
    ("I have a dog named Rex.", "I have a dog named Max."),  # two dogs
    ("My dog is called Rex.", "My other dog is called Max."),
    ("I live in Tallinn.", "I live in a small town."),  # a description, not another place
    ("I live in Lisbon.", "I lived in Australia for 4 years."),  # the past
    ("I like tea.", "I like coffee."),  # preferences add up
    ("My sister's name is Ingrid.", "My brother's name is Tom."),
    ("My favourite colour is teal.", "My favourite food is pierogi."),
    ("I live in Lisbon.", "I live in Lisbon, near the river."),  # a refinement
    ("My phone number is 555-0100.", "My phone number is also 555-0199."),
])
def test_facts_that_only_look_alike_are_kept_side_by_side(memory, old, new):
    user = f"k{abs(hash((old, new))) % 10**8}"
    first = memory.add(old, user_id=user)["results"][0]
    second = memory.add(new, user_id=user)["results"][0]
    assert second["event"] == "ADD", second
    assert {f["id"] for f in memory.get_all(user_id=user)["results"]} == {first["id"], second["id"]}


def test_third_party_facts_update_per_subject(memory):
    memory.add("Velora Quint lives in Oslo.", user_id="people", infer=False)
    memory.add("Tomas Brenn lives in Lima.", user_id="people", infer=False)
    moved = memory.add("Velora Quint lives in Quito.", user_id="people", infer=False)["results"][0]
    assert moved["event"] == "UPDATE"
    assert sorted(f["memory"] for f in memory.get_all(user_id="people")["results"]) == [
        "Tomas Brenn lives in Lima.", "Velora Quint lives in Quito."]


def test_slot_rules_explain_themselves():
    assert find_slot("By the way, my dog is called Biscuit.").attribute == "dog name"
    assert find_slot("I'm a sommelier by trade, actually.").value == "sommelier"
    assert find_slot("My sister is visiting soon.") is None
    assert find_slot("Guess what, I moved to Oslo.").value == "oslo"  # a short lead-in is skipped
    why = conflict(find_slot("My new number is 555-0199."), find_slot("My phone number is 555-0100."))
    assert why == "same slot (the user's number): '555-0100' -> '555-0199'"


def test_a_superseded_fact_stated_again_comes_back(memory):
    memory.add("I live in Lisbon.", user_id="boomerang")
    memory.add("I moved to Oslo.", user_id="boomerang")
    back = memory.add("I live in Lisbon.", user_id="boomerang")["results"][0]
    assert back["event"] == "UPDATE"  # a new active copy; the Oslo fact is superseded in turn
    assert [f["memory"] for f in memory.get_all(user_id="boomerang")["results"]] == ["The user lives in Lisbon."]


def test_supersession_can_be_turned_off(store):
    memory = FactMemory(store, config=memlm.facts.FactBankConfig(supersede=False))
    memory.add("I live in Lisbon.", user_id="ada")
    assert memory.add("I moved to Oslo.", user_id="ada")["results"][0]["event"] == "ADD"
    assert len(memory.get_all(user_id="ada")["results"]) == 2


def test_expired_facts_are_never_retrieved_but_kept(memory):
    clock = Clock(1_000_000.0)
    memory.store.clock = clock
    try:
        memory.add("My hotel room is 214.", user_id="trip", ttl=3600)
        memory.add("My passport number is X123.", user_id="trip")
        memory.add("My gate is B7.", user_id="trip", expires_at=1_000_000.0 + 60)
        assert len(memory.search("hotel room gate", user_id="trip", threshold=-1)["results"]) == 3
        clock.now += 120  # the gate expired
        hits = memory.search("hotel room gate", user_id="trip", threshold=-1)["results"]
        assert "The user's gate is B7." not in [h["memory"] for h in hits] and len(hits) == 2
        clock.now += 3600  # the room too
        assert [h["memory"] for h in memory.search("room", user_id="trip", threshold=-1)["results"]] == [
            "The user's passport number is X123."]
        assert len(memory.get_all(user_id="trip")["results"]) == 1
        every = memory.get_all(user_id="trip", show_expired=True)["results"]
        assert len(every) == 3 and sum(f["expires_at"] is not None for f in every) == 2
        gate = next(f for f in every if "gate" in f["memory"])
        memory.update(gate["id"], user_id="trip", expires_at=None)  # un-expire
        assert len(memory.get_all(user_id="trip")["results"]) == 2
    finally:
        memory.store.clock = __import__("time").time


def test_bank_ttl_sets_every_new_facts_expiry(store):
    clock = Clock(1_000.0)
    from helpers import words_bank

    bank = words_bank(clock=clock, ttl=10.0, store=store)
    fact = bank.learn("the locker code is 4417").fact
    assert fact.expires_at == 1_010.0
    clock.now = 1_011.0
    assert bank.retrieve("locker code", min_similarity=-1) == []


def test_a_question_about_a_slot_prefers_the_fact_that_fills_it():
    """'Where do I live now?' asks for the slot "home"; "I moved to Ljubljana" fills it, chit-chat about
    where one is from does not, though MiniLM puts it closer."""
    from memlm.facts.slots import question_slot

    assert question_slot("What's my dog called?") == "dog name"
    assert question_slot("What do I do for a living?") == "job"
    assert question_slot("Which colour do I like best?") is None
    chatter = ["I love it when people guess where I am from.", "I moved to Ljubljana last year."]
    order = {}
    for bonus in (0.0, 0.2):
        memory = FactMemory(None, config=memlm.facts.FactBankConfig(slot_bonus=bonus))
        for text in chatter:
            memory.add(text, user_id="ada")
        order[bonus] = [h["memory"] for h in memory.search("Where do I live now?", user_id="ada")["results"]]
    assert order[0.0][0] == "The user loves it when people guess where the user is from."
    assert order[0.2][0] == "The user moved to Ljubljana last year."
