"""Training needles (`memlm.data.needle_train`): the training cast only, and no sentence, question or key
phrasing of the evaluation's needles (`memlm.data.needles`), whose shapes are derived here from its own
generator, so a template added to either side is checked too."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from functools import lru_cache

import pytest

from memlm.data import needle_train, needles
from memlm.data.cast import TITLES, cast

SENTINEL = "Zqxsentinel"  # stands for every slot of a template (a person, a value): a word no shape holds
SEEDS = range(150)


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold())


def trigrams(sequence: list[str]) -> set[tuple[str, ...]]:
    return {tuple(sequence[i:i + 3]) for i in range(len(sequence) - 2)}


@lru_cache(maxsize=1)
def evaluation_shapes() -> tuple[frozenset[tuple[str, ...]], tuple[frozenset[str], ...]]:
    """The evaluation's sentence and question shapes: per template, its fixed words (those in every draw)
    and the runs of three fixed words in a row ("lab moved to", "what is the", "the pass key")."""
    templates = [[needles._fact(kind, SENTINEL, random.Random(i)) for i in range(300)] for kind in needles.KINDS]
    templates.append([(facts[0], question) for facts, question, _ in
                      (needles._passkey(random.Random(i)) for i in range(300))])
    runs, fixed_sets = set(), []
    for draws in templates:
        for part in (0, 1):  # the sentence, the question
            drawn = [words(draw[part]) for draw in draws]
            fixed = set.intersection(*map(set, drawn)) - {SENTINEL.casefold()}
            assert len(fixed) >= 2, draws[0][part]
            fixed_sets.append(frozenset(fixed))
            for sequence in drawn[:20]:
                runs |= {run for run in trigrams([w if w in fixed else "*" for w in sequence]) if "*" not in run}
    return frozenset(runs), tuple(fixed_sets)


def evaluation_shape_in(text: str) -> str | None:
    """What of the evaluation's phrasing `text` holds: a run of three of its fixed words, all the fixed
    words of one of its templates (in any order), or its name for the key; None if nothing."""
    runs, fixed_sets = evaluation_shapes()
    found = trigrams(words(text)) & runs
    if found:
        return f"the evaluation's words {' '.join(sorted(found)[0])!r}"
    for fixed in fixed_sets:
        if fixed <= set(words(text)):
            return f"every fixed word of an evaluation template {sorted(fixed)}"
    if "pass key" in text.casefold() or "passkey" in text.casefold():
        return "the evaluation's name for the key"
    return None


def training_samples(task: str) -> list:
    return [s for seed in SEEDS for s in needle_train.generate(task, 2, 0, seed, lambda t: len(t.split()))]


def all_templates() -> list[str]:
    slots = defaultdict(lambda: SENTINEL)
    shapes = [*needle_train.SHAPES.values(), *needle_train.KEYS]
    return [template.format_map(slots) for sentences, questions in shapes for template in (*sentences, *questions)] \
        + [repeat.format_map(slots) for repeat in needle_train.REPEATS if repeat]


def test_the_shape_check_finds_every_evaluation_needle():
    # The checker below is only as good as this: it flags every fact and question the evaluation asks.
    for task in needles.TASKS:
        for sample in needles.generate(task, 60, 0, 3, lambda t: len(t.split())):
            assert all(evaluation_shape_in(text) for text in (*sample.facts, sample.question)), sample


@pytest.mark.parametrize("task", needle_train.TASKS)
def test_training_needles_use_no_sentence_question_or_key_phrasing_of_the_evaluation(task):
    for template in all_templates():  # every shape, whether or not a seed drew it
        assert evaluation_shape_in(template) is None, template
    for sample in training_samples(task):
        for text in (*sample.facts, sample.question):
            assert evaluation_shape_in(text) is None, text


def unseen_words() -> tuple[set[str], set[str]]:
    unseen = cast("unseen")
    names = {w for phrase in (*unseen.female, *unseen.male, *unseen.surnames, *unseen.cities) for w in words(phrase)}
    things = {w for phrase in (*unseen.rooms, *unseen.objects) for w in words(phrase)}
    return {w for w in names if len(w) > 1}, {w for w in things if len(w) > 1}


@pytest.mark.parametrize("task", needle_train.TASKS)
def test_training_needles_never_name_the_unseen_cast(task):
    names, things = unseen_words()
    train = cast("train")
    train_names = {w for p in (*train.female, *train.male, *train.surnames, *train.cities) for w in words(p)}
    named = 0
    for sample in training_samples(task):
        for text in (*sample.facts, sample.question, sample.answer):
            capitalized = {w.casefold() for w in re.findall(r"[^\W\d_]+", text) if w[0].isupper()}
            assert not capitalized & names, (text, capitalized & names)  # no unseen person or city
            assert not set(words(text)) & things, (text, set(words(text)) & things)  # no unseen room or object
            named += len(capitalized & train_names)
    if task == "facts":
        assert named > 1000  # the people, authors, cities and schools are the training cast's


def test_training_answers_are_none_of_the_evaluations_values():
    evaluation = {w.casefold() for w in (*needles.COLOURS, *needles.INSTRUMENTS, *needles.PETS, *needles.DAYS,
                                         *needles.ORDINALS)}
    for sample in training_samples("facts"):
        assert not set(words(sample.answer)) & evaluation, sample.answer


def test_training_needles_are_varied_answerable_and_hidden_at_length():
    count = lambda text: len(text.split())  # noqa: E731
    hay = ["The river ran cold past the mill. Nobody asked the miller why. The wind rose at dusk."]
    for task in needle_train.TASKS:
        samples = needle_train.generate(task, 20, 1500, 4, count, haystack=hay)
        assert samples == needle_train.generate(task, 20, 1500, 4, count, haystack=hay)
        for sample in samples:
            assert abs(count(sample.context) - 1500) <= 30 and all(f in sample.context for f in sample.facts)
            assert sum(needles.answer_correct(fact, sample.answer) for fact in sample.facts) >= 1
    facts = training_samples("facts")
    for sample in facts:  # whoever the question names is named in exactly one fact, and it holds the answer
        asked = {w for w in re.findall(r"[^\W\d_][\w.]*", sample.question)[1:] if w[0].isupper()}
        naming = [fact for fact in sample.facts if asked <= set(re.findall(r"[^\W\d_][\w.]*", fact))]
        assert asked and len(naming) == 1 and needles.answer_correct(naming[0], sample.answer), sample
    assert {min(len(s.facts) for s in facts), max(len(s.facts) for s in facts)} == {3, 5}
    # No two people, authors, cities or schools of a sample share a word ("Anna" and "Anna Berg" would
    # make a question about Anna ask about two facts); the templates' own capitals and months may repeat.
    shared = {w for template in all_templates() for w in re.findall(r"[A-Z]\w*", template)}
    shared |= {*needle_train.MONTHS, *(w for school in needle_train.SCHOOLS for w in school.split())}
    for sample in facts:
        named = [{w if w in TITLES else w.rstrip(".") for w in re.findall(r"[^\W\d_]\w*\.?", fact)
                  if w[0].isupper()} - shared for fact in sample.facts]
        assert all(not a & b for i, a in enumerate(named) for b in named[i + 1:]), sample.facts
    sentences = {re.sub(r"[A-Z]\w*|\d+", "", fact) for s in facts for fact in s.facts}
    assert len({s.question.split()[0] for s in facts}) >= 6 and len(sentences) > 50
    keys = training_samples("passkey")
    assert {len(s.answer) for s in keys} == {4, 5, 6, 7} and len({s.question for s in keys}) >= 10
    assert len(needle_train.KINDS) >= 10 and set(needle_train.KINDS).isdisjoint(needles.KINDS)
    assert all(len(sentences) >= 2 and len(questions) >= 2 for sentences, questions in needle_train.SHAPES.values())
    with pytest.raises(ValueError, match="training haystack"):
        needle_train.generate("facts", 1, 1000, 0, count)  # never the evaluation's default haystack
