"""The casts of the BABILong stories: large training vocabularies, an unseen split that training never
draws from, and the rewriting of a bAbI story into either."""

from __future__ import annotations

import random
import re

import pytest

from memlm.data import babilong
from memlm.data.cast import (
    BABI_FEMALE,
    BABI_MALE,
    BABI_OBJECTS,
    BABI_PLACES,
    BUILDING_KINDS,
    TITLES,
    Recast,
    answer_form,
    cast,
    distractor_text,
    split_of,
)
from memlm.eval.scoring import babilong_correct, contains


def words_of(split: str) -> set[str]:
    chosen = cast(split)
    phrases = (*chosen.female, *chosen.male, *chosen.surnames, *chosen.rooms, *chosen.cities, *chosen.objects)
    return {word.casefold() for phrase in phrases for word in phrase.split()}


def test_the_unseen_cast_shares_no_word_with_the_training_cast():
    train, unseen = words_of("train"), words_of("unseen")
    assert not train & unseen
    assert len(cast("train").female) > 5000 and len(cast("train").male) > 5000  # large, not bAbI's four
    assert len(cast("unseen").female) > 1000 and len(cast("unseen").rooms) >= 20 and len(cast("unseen").cities) > 1000
    # bAbI's own cast is all training vocabulary, so the unseen split is outside it by construction.
    assert {w.casefold() for w in (*BABI_FEMALE, *BABI_MALE, *BABI_PLACES, *BABI_OBJECTS)} <= train
    assert all(split_of(word) == "train" for word in BABI_FEMALE + BABI_MALE)


def test_most_names_are_several_tokens_for_the_default_tokenizer_family():
    from tiny import tiny_tokenizer  # byte-level: a proxy for "not one token each"

    names = cast("unseen").female[:200]
    assert sum(len(tiny_tokenizer()(" " + name).input_ids) > 3 for name in names) > 150


def _unseen_samples(task: str, n: int = 6, seed: int = 3) -> tuple[list, list]:
    count = lambda text: len(text.split())  # noqa: E731
    plain = babilong.generate(task, n, 0, seed, count)
    recast = babilong.generate(task, n, 0, seed, count, transform=Recast("unseen"))
    return plain, recast


@pytest.mark.parametrize("task", babilong.TASKS)
def test_a_recast_story_is_the_same_world_with_other_names(task):
    unseen = words_of("unseen")
    for plain, sample in zip(*_unseen_samples(task), strict=True):
        assert len(sample.facts) == len(plain.facts)
        text = " ".join((*sample.facts, sample.question))
        # Nothing of bAbI's cast is left, and every entity now comes from the unseen split.
        assert not re.search(r"\b(" + "|".join((*BABI_FEMALE, *BABI_MALE, *BABI_PLACES, *BABI_OBJECTS)) + r")\b", text)
        shared = {word.casefold() for word in (*TITLES, *BUILDING_KINDS)}  # "Dr.", "Gallery": not names
        assert all(word.casefold() in unseen | shared for label in sample.labels for word in label.split())
        # The answer is the renamed original answer: named in the facts, one of the labels, and scored
        # correct only when a reply names it alone.
        assert sample.answer in sample.labels and sample.answer != plain.answer
        assert any(contains(fact, sample.answer) for fact in sample.facts)
        other = next(label for label in sample.labels if label != sample.answer
                     and not contains(sample.question, label))
        assert babilong_correct(f"{sample.answer}.", sample.answer, sample.answer_labels, sample.question)
        assert not babilong_correct(f"{sample.answer} or {other}.", sample.answer, sample.answer_labels,
                                    sample.question)


def test_recasting_is_deterministic_and_keeps_pronouns_true_to_gender():
    first, second = (babilong.generate_followup(4, 0, 5, lambda t: len(t.split()), transform=Recast("unseen"))
                     for _ in range(2))
    assert first == second
    female = set(cast("unseen").female)
    for sample in first:
        person = re.fullmatch(r"Where is (.+)\?", sample.questions[0]).group(1)
        pronoun = re.fullmatch(r"Where was (she|he) before that\?", sample.questions[1]).group(1)
        first_word = person.split()[0]
        if first_word in female or first_word in ("Mrs.", "Ms.", "Aunt"):
            assert pronoun == "she"
        elif first_word not in ("Dr.", "Professor", "Captain"):  # a title that says nothing of gender
            assert pronoun == "he"


def test_training_recasts_rephrase_and_sometimes_keep_babi():
    recast = Recast("train", rephrase=True, keep_babi=0.25)
    stories = [recast(["Mary went to the kitchen.", "John picked up the milk."], "Where is Mary?", "kitchen",
                      random.Random(seed)) for seed in range(200)]
    kept = [story for story in stories if story[1] == "Where is Mary?"]
    assert 25 < len(kept) < 80  # about a quarter keep bAbI's people (and places and objects)
    verbs = {re.sub(r"^.*?(\w+) to .*$", r"\1", story[0][0]) for story in stories}
    assert len(verbs) > 10  # many ways of moving
    assert all(story[2] == answer_form(story[2]) and contains(story[0][0], story[2]) for story in stories)


def test_distractors_name_the_training_cast_and_state_no_move():
    text = distractor_text("train", sentences=300, seed=1)
    assert text == distractor_text("train", sentences=300, seed=1)
    sentences = babilong.split_sentences(text)
    assert len(sentences) >= 300
    train = words_of("train")
    names = {word.casefold() for word in re.findall(r"\b[A-Z][a-z]+\b", text)}
    assert len(names & train) > 100
    moves = re.compile(r"\b(moved|went|journeyed|travelled|picked up|grabbed|dropped|gave|handed) ")
    assert not any(moves.search(sentence) for sentence in sentences)
