"""Rule-based fact extraction from chat messages: what is kept, how it is rephrased, its category."""

from __future__ import annotations

import pytest

from memlm.facts.extraction import categorize, extract_facts, split_sentences, third_person


@pytest.mark.parametrize("message, facts", [
    ("Hi! My name is Ada. What's the weather like?", ["The user's name is Ada."]),
    ("I live in Lisbon and I love sardines.", ["The user lives in Lisbon and the user loves sardines."]),
    ("Remember that the meeting is on Friday.", ["The meeting is on Friday."]),
    ("We have two kids.", ["The user has two kids."]),
    ("I'm allergic to peanuts!", ["The user is allergic to peanuts!"]),
    ("ok", []), ("Thanks!", []), ("Do you like cats?", []), ("The sky is blue.", []),
])
def test_first_person_statements_are_kept_in_the_third_person(message, facts):
    assert [f.text for f in extract_facts(message)] == facts


def test_each_fact_keeps_the_users_own_sentence_and_a_category():
    (fact,) = extract_facts("Oh, my dog is called Biscuit.")
    assert fact.sentence == "Oh, my dog is called Biscuit."  # what retrieval matches questions against
    assert fact.category == "pet"
    assert [categorize(s) for s in ("I work as a nurse.", "My sister is Eva.", "I prefer tea.")] == [
        "work", "family", "preference"]


def test_a_judge_can_rescue_sentences_the_rules_miss():
    sentence = "Tuesdays are for chess club."
    assert extract_facts(sentence) == []
    assert [f.text for f in extract_facts(sentence, judge=lambda s: "chess" in s)] == [sentence]


def test_verbs_agree_with_the_third_person():
    assert third_person("I really enjoy hiking") == "The user really enjoys hiking."
    assert third_person("I go to the gym") == "The user goes to the gym."
    assert third_person("I study physics") == "The user studies physics."
    assert third_person("I can swim") == "The user can swim."
    assert split_sentences("One. Two!\nThree?") == ["One.", "Two!", "Three?"]
