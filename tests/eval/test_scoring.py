"""Scoring rules: BABILong's first-sentence rule and answer matching."""

from __future__ import annotations

import pytest

from memlm.data import babilong
from memlm.eval import scoring
from memlm.eval.scoring import clean_reply, recites


def test_babilong_rule_reads_only_the_first_sentence():
    assert scoring.babilong_correct("The football is in the garden. Then John left.", "garden")
    assert scoring.babilong_correct("GARDEN", "garden")
    assert not scoring.babilong_correct("I am not sure. The football is in the garden.", "garden")
    assert not scoring.babilong_correct("It is next to the gardener.", "garden")
    assert not scoring.babilong_correct("Kitchen\nGarden", "garden")
    assert not scoring.babilong_correct("", "garden")
    labels = babilong.LABELS["qa1"]
    assert not scoring.babilong_correct("Mary is in the garden or the kitchen.", "garden", labels)
    # Rooms named by the question do not count against the answer.
    assert scoring.babilong_correct("The bathroom is south of the kitchen.", "kitchen", labels,
                                    question="What is the bathroom south of?")


def test_first_sentence_and_matching_rules():
    assert scoring.first_sentence("") == ""
    assert scoring.first_sentence("  Office! Or not.") == "Office"
    assert scoring.first_sentence("No end mark") == "No end mark"
    assert scoring.first_sentence("Born in 1987.5 maybe") == "Born in 1987.5 maybe"
    assert scoring.contains("Mango, I think.", "mango")
    assert not scoring.contains("mangoes", "mango")
    assert not scoring.contains("anything", "")
    assert scoring.normalize("  The  Lucky-Number: 42! ") == "lucky number 42"
    assert scoring.exact_match("The mango.", "mango")
    assert not scoring.exact_match("A ripe mango", "mango")


@pytest.mark.parametrize("reply, clean", [
    ("Your favourite colour is teal.", True),
    ("Teal.", True),
    ("You told me you love teal, it's your favourite.", True),
    ("The user's favourite colour is teal.", False),  # about the user, not to them
    ("I love teal, it's my favourite.", False),  # the model speaks as if it were the user
    ("Your favourite colour is teal and your dog is Biscuit.", False),  # another of the user's facts
    ("You went to a really small school. Your favourite colour is teal.", False),  # recites a retrieved fact
    ("Your favourite colour is maroon.", False),  # wrong
])
def test_a_clean_reply_answers_speaks_to_the_user_and_recites_nothing_else(reply, clean):
    retrieved = ["I went to a really small school in the north.", "My favourite colour is teal."]
    assert clean_reply(reply, "teal", ["Biscuit"], retrieved, "What is my favourite colour?") is clean


def test_reciting_needs_most_of_a_facts_own_words():
    assert recites("You grow basil on your balcony.", "I grow basil on my balcony.")
    assert not recites("Your balcony is sunny.", "I grow basil on my balcony.")
    assert not recites("Basil.", "I grow basil on my balcony.", "What do I grow on my balcony?")


@pytest.mark.parametrize("successes, trials, low, high", [
    # hand-computed: centre = (p + z²/2n) / (1 + z²/n), half = z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
    (95, 100, 0.888250, 0.978456), (5, 10, 0.236593, 0.763407), (0, 10, 0.0, 0.277533), (10, 10, 0.722467, 1.0),
    (1, 3, 0.061492, 0.792340), (0, 0, 0.0, 1.0),
])
def test_wilson_interval_matches_hand_computed_values(successes, trials, low, high):
    got = scoring.wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=1e-6)


def test_a_wider_z_gives_a_wider_wilson_interval():
    narrow, wide = scoring.wilson_interval(30, 60, z=1.0), scoring.wilson_interval(30, 60, z=3.0)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert narrow == pytest.approx((0.435982, 0.564018), abs=1e-6)


def test_wilson_interval_at_one_trial_and_its_bounds_hold_exactly():
    assert scoring.wilson_interval(1, 1) == pytest.approx((0.206549, 1.0), abs=1e-6)  # one trial is data
    assert scoring.wilson_interval(0, 1) == pytest.approx((0.0, 0.793451), abs=1e-6)
    for trials in range(1, 60):  # float rounding can put the raw bound a hair outside [0, 1] (e.g. 20/20)
        assert scoring.wilson_interval(trials, trials)[1] <= 1.0 and scoring.wilson_interval(0, trials)[0] >= 0.0


def test_without_a_question_every_other_label_counts_against_the_answer():
    labels = ["xxxx", "yyyy"]
    assert not scoring.babilong_correct("The yyyy and the xxxx.", "yyyy", labels)
    assert scoring.babilong_correct("The yyyy and the xxxx.", "yyyy", labels, question="Is it the xxxx?")


def test_reciting_counts_exactly_two_words_and_sixty_percent():
    assert recites("xxxx yyyy", "xxxx yyyy")  # no question: no word is removed
    assert recites("basil balcony", "Basil on the balcony.")  # exactly two content words, both repeated
    # two of five content words: fewer than 60%
    assert not recites("basil balcony", "Purple basil grows on the sunny balcony.")
    assert recites("purple basil on the balcony", "Purple basil grows on the sunny balcony.")  # three of five


def test_a_clean_reply_ignores_only_the_questions_own_words_when_judging_recitals():
    assert not clean_reply("Teal xxxx yyyy", "teal", retrieved=["xxxx yyyy"])  # no question: all words count
    # the retrieved fact shares only the question's words with the reply: not a recital
    assert clean_reply("Your favourite colour is teal.", "teal", retrieved=["My favourite colour was maroon."],
                       question="What is my favourite colour?")
