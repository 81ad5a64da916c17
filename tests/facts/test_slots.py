"""The slot rules on their own (`memlm.facts.slots`): what a sentence states, what a question asks,
and when a new statement replaces an old one. (The bank's use of them is tested in test_updates.py.)"""

from __future__ import annotations

import pytest

from memlm.facts.slots import _clean, _normalise_value, _value_kind, conflict, find_slot, question_slot, same_attribute


def test_lead_ins_are_dropped_and_contractions_spelt_out():
    assert _clean("Oh, well, I'm a pilot") == "I am a pilot"
    assert _clean("BTW I'm in Oslo") == "I am in Oslo"


@pytest.mark.parametrize(("value", "kind"), [
    ("555-1234", "number"), ("+44 20 7946 0958", "number"), ("Tallinn", "name"), ("the Bajc Library", "name"),
    ("a Tesla", "name"), ("an Audi", "name"), ("my Clio", "name"), ("our Renault", "name"), ("teal", "word"),
    ("a small town", "word"),
])
def test_values_are_numbers_names_or_words(value, kind):
    assert _value_kind(value) == kind


@pytest.mark.parametrize(("value", "normalised"), [
    ("Oslo last month.", "Oslo"), ("Oslo!", "Oslo"), ("Unit X.", "Unit X"), ("Lisbon, near the river", "Lisbon"),
    ("pilot these days", "pilot"),
])
def test_values_lose_time_phrases_asides_and_final_stops(value, normalised):
    assert _normalise_value(value) == normalised


def test_a_short_lead_in_before_a_colon_is_skipped_a_long_one_is_not():
    assert find_slot("Big news for you: I moved to Oslo").value == "oslo"  # four words
    assert find_slot("Some big news for you: I moved to Oslo") is None  # five


def test_what_each_kind_of_sentence_states():
    home = find_slot("I moved to Oslo")
    assert (home.subject, home.attribute, home.value, home.kind, home.additive, home.change) == (
        "user", "home", "oslo", "name", False, True)
    assert find_slot("I live in Oslo").change is False
    assert find_slot("I live in Oslo?") is None  # a question states nothing
    assert (find_slot("I work as a pilot").attribute, find_slot("Ada lives in Ghent").subject) == ("job", "ada")
    colour = find_slot("My favourite colour is teal")
    assert (colour.attribute, colour.value, colour.kind) == ("favourite colour", "teal", "word")
    assert find_slot("My dog is called Rex").attribute == "dog name"
    assert find_slot("My other car is a Clio").additive is True
    for sentence in ("My kids are Tom and Ann", "My car was red", "My cats were grey", "I lived in Oslo",
                     "My plan is Going abroad", "My flat is In Porto"):
        assert find_slot(sentence) is None, sentence


def test_values_of_up_to_six_words_are_kept():
    assert find_slot("My address is one two three four five six").value == "one two three four five six"
    assert find_slot("My address is one two three four five six seven") is None


def test_attributes_match_by_last_word_and_containment():
    assert same_attribute("phone number", "number") and same_attribute("number", "phone number")
    assert same_attribute("phone number", "phone number")
    assert not same_attribute("phone number", "phone model")
    assert not same_attribute("favourite colour", "car colour")


def test_a_change_replaces_unless_one_side_adds_refines_or_agrees():
    old, new = find_slot("I live in Oslo"), find_slot("I moved to Bergen")
    assert conflict(new, old) == "same slot (the user's home): 'oslo' -> 'bergen'"
    assert conflict(find_slot("Ada lives in Tartu"), find_slot("Ada lives in Ghent")) == (
        "same slot (ada's home): 'ghent' -> 'tartu'")
    assert conflict(new, find_slot("I also live in Oslo")) is None  # the old one said it was one more
    lisbon, old_town = find_slot("I live in Lisbon"), find_slot("I live in Lisbon Old Town")
    assert lisbon.kind == old_town.kind == "name"
    assert conflict(old_town, lisbon) is None and conflict(lisbon, old_town) is None  # a refinement
    assert conflict(find_slot("I live in a small town"), old) is None  # a word does not contradict a name


@pytest.mark.parametrize(("question", "slot"), [
    ("What's my dog called?", "dog name"), ("What is the Name of my dog?", "dog name"),
    ("What's my brother's dog called?", "brother dog name"), ("Where do I live now?", "home"),
    ("What do I do for a living?", "job"), ("What is my favourite colour?", "favourite colour"),
    ("How tall is Everest?", None),
])
def test_questions_name_the_slot_they_ask_for(question, slot):
    assert question_slot(question) == slot
