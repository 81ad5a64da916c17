"""Data generators: BABILong-style bAbI tasks hidden in haystacks, continual facts, multi-session users."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from tiny import tiny_tokenizer

from memlm.data import babilong, continual_facts

_TOKENIZER = tiny_tokenizer()


def byte_count(text: str) -> int:
    return len(_TOKENIZER(text).input_ids)


def word_count(text: str) -> int:
    return len(text.split())


def assert_facts_in_order(sample: babilong.Sample) -> None:
    cursor = 0
    for fact in sample.facts:
        found = sample.context.find(fact, cursor)
        assert found >= 0, f"{fact!r} missing (or out of order) in the {sample.task} context"
        cursor = found + len(fact)


# --- BABILong -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", babilong.TASKS)
@pytest.mark.parametrize("length", [0, 1000, 4000, 16000])
def test_answers_follow_from_facts_hidden_in_order(task, length):
    for seed in (0, 1, 7):
        samples = babilong.generate(task, n=3, length=length, seed=seed, count_tokens=byte_count)
        assert len(samples) == 3
        for sample in samples:
            assert (sample.task, sample.target_tokens, sample.seed) == (task, length, seed)
            assert babilong.solve(task, sample.facts, sample.question) == sample.answer
            assert re.fullmatch(r"\w+", sample.answer) and sample.answer in babilong.LABELS[task]
            assert babilong.STORY_SIZES[task][0] <= len(sample.facts) <= babilong.STORY_SIZES[task][1]
            assert_facts_in_order(sample)
            if length == 0:
                assert sample.context == " ".join(sample.facts)
            else:
                assert abs(byte_count(sample.context) - length) <= 0.02 * length


@pytest.mark.parametrize("task", babilong.TASKS)
def test_many_stories_are_solvable_and_varied(task):
    samples = babilong.generate(task, n=150, length=0, seed=3, count_tokens=word_count)
    for sample in samples:
        assert babilong.solve(task, sample.facts, sample.question) == sample.answer
    # Distractors vary the story length, and answers are spread over the label set.
    assert len({len(sample.facts) for sample in samples}) >= 3
    assert len(Counter(sample.answer for sample in samples)) >= 4
    assert len({sample.question for sample in samples}) >= 3
    # The question must not always be about the story's final sentence.
    assert sum(sample.answer not in sample.facts[-1] for sample in samples) >= len(samples) // 5


def test_solver_reads_hand_written_stories():
    # Independent of the generator: catches a solver that merely mirrors the generator's mistakes.
    solve = babilong.solve
    assert solve("qa1", ["Mary moved to the bathroom.", "John went to the hallway.", "Mary travelled to the office."],
                 "Where is Mary?") == "office"
    carried = ["Mary went to the kitchen.", "Mary picked up the football.", "Mary journeyed to the garden.",
               "John moved to the office."]
    assert solve("qa2", carried, "Where is the football?") == "garden"
    dropped = carried[:2] + ["Mary dropped the football.", "Mary went back to the garden."]
    assert solve("qa2", dropped, "Where is the football?") == "kitchen"
    trail = ["Sandra went to the hallway.", "Sandra got the apple there.", "Sandra moved to the kitchen.",
             "Sandra travelled to the bedroom."]
    assert solve("qa3", trail, "Where was the apple before the kitchen?") == "hallway"
    assert solve("qa3", trail, "Where was the apple before the bedroom?") == "kitchen"
    rooms = ["The kitchen is north of the bathroom.", "The garden is west of the kitchen."]
    assert solve("qa4", rooms, "What is north of the bathroom?") == "kitchen"
    assert solve("qa4", rooms, "What is the bathroom south of?") == "kitchen"
    assert solve("qa4", rooms, "What is east of the garden?") == "kitchen"
    gifts = ["Fred went to the office.", "Fred got the football there.", "Bill moved to the office.",
             "Fred gave the football to Bill.", "Bill handed the football to Jeff."]
    assert solve("qa5", gifts, "Who gave the football to Jeff?") == "Bill"
    assert solve("qa5", gifts, "What did Fred give to Bill?") == "football"
    assert solve("qa5", gifts, "Who did Fred give the football to?") == "Bill"
    with pytest.raises(ValueError):
        solve("qa1", ["Mary moved to the bathroom."], "Where is John?")
    with pytest.raises(ValueError):
        solve("qa1", ["Mary flew to the moon."], "Where is Mary?")


def test_same_seed_same_samples_other_seed_other_samples():
    def make(seed):
        return babilong.generate("qa2", n=4, length=1000, seed=seed, count_tokens=byte_count)

    assert make(5) == make(5)
    assert make(5) != make(6)
    assert [s.question for s in make(5)] != [s.question for s in make(6)] or \
        [s.facts for s in make(5)] != [s.facts for s in make(6)]
    # One sample is the same story at every length, so results across lengths compare like with like.
    short, long = (babilong.generate("qa5", n=2, length=n, seed=5, count_tokens=byte_count) for n in (0, 4000))
    assert [(s.facts, s.question, s.answer) for s in short] == [(s.facts, s.question, s.answer) for s in long]
    assert short[0].context != long[0].context


@pytest.mark.parametrize("length", [1000, 4000, 16000])
def test_whitespace_token_count_lands_within_two_percent(length):
    for task in ("qa1", "qa4"):
        for sample in babilong.generate(task, n=3, length=length, seed=2, count_tokens=word_count):
            assert abs(word_count(sample.context) - length) <= 0.02 * length
            assert_facts_in_order(sample)


def test_short_custom_haystack_is_cycled():
    haystack = ["The ship sailed at dawn. Gulls followed it for a while.", "Nobody spoke at supper."]
    [sample] = babilong.generate("qa1", n=1, length=2000, seed=0, count_tokens=word_count, haystack=haystack)
    assert abs(word_count(sample.context) - 2000) <= 40
    assert sample.context.count("Nobody spoke at supper.") > 50
    assert_facts_in_order(sample)


def test_128k_context_is_on_target():
    # its speed (two 128K contexts in < 10 s) is a target in benchmarks/timing_targets.py
    samples = babilong.generate("qa3", n=2, length=128_000, seed=0, count_tokens=word_count)
    for sample in samples:
        assert abs(word_count(sample.context) - 128_000) <= 0.02 * 128_000
        assert_facts_in_order(sample)
        assert babilong.solve("qa3", sample.facts, sample.question) == sample.answer


def test_prompts_keep_context_separate():
    [sample] = babilong.generate("qa4", n=1, length=1000, seed=0, count_tokens=byte_count)
    question_only = babilong.question_prompt(sample)
    assert question_only.endswith(f"Question: {sample.question}")
    assert sample.facts[0] not in question_only and "single word" in question_only
    full = babilong.full_prompt(sample)
    assert f"<context>\n{sample.context}\n</context>" in full
    assert full.startswith(babilong.instruction("qa4")) and full.endswith(f"Question: {sample.question}")
    assert babilong.instruction("qa1") != babilong.instruction("qa5")


def test_rejects_unknown_task_and_negative_sizes():
    with pytest.raises(ValueError, match="unknown task"):
        babilong.generate("qa6", n=1, length=0, seed=0, count_tokens=word_count)
    with pytest.raises(ValueError):
        babilong.generate("qa1", n=1, length=-5, seed=0, count_tokens=word_count)


# --- Scoring --------------------------------------------------------------------------------------


# --- Continual facts ------------------------------------------------------------------------------


def _bigrams(text: str, entity: str) -> set[tuple[str, str]]:
    words = re.findall(r"[\w']+", text.replace(entity, "ENTITY").lower())
    return set(zip(words, words[1:], strict=False))


def test_continual_facts_are_unique_paraphrased_and_deterministic():
    items = continual_facts.generate(n=1000, seed=0)
    assert len(items) == 1000
    assert [item.index for item in items] == list(range(1000))
    assert len({(item.entity, item.relation) for item in items}) == 1000
    assert len({item.relation for item in items}) >= 10
    assert len({item.entity for item in items}) < 1000  # some entities carry several facts
    for item in items:
        assert item.entity in item.fact and item.entity in item.question
        assert re.fullmatch(r"\w+", item.answer) and re.search(rf"\b{item.answer}\b", item.fact)
        assert not re.search(rf"\b{item.answer}\b", item.question, flags=re.IGNORECASE)
        # Paraphrase: at most a third of the question's word pairs also occur in the fact.
        question_pairs = _bigrams(item.question, item.entity)
        assert len(question_pairs & _bigrams(item.fact, item.entity)) <= len(question_pairs) / 3, item
    assert continual_facts.generate(n=1000, seed=0) == items
    assert continual_facts.generate(n=50, seed=1) != items[:50]
    assert continual_facts.generate(n=0) == []


def test_every_relation_offers_several_wordings():
    for name, relation in continual_facts.RELATIONS.items():
        assert len(relation.facts) >= 2 and len(relation.questions) >= 2, name
        assert len(set(relation.answers)) >= 10, name
        assert all(re.fullmatch(r"\w+", answer) for answer in relation.answers), name


# --- multi-session recall ------------------------------------------------------------------------
def test_multisession_users_state_each_asked_fact_once_among_filler():
    from memlm.data import multisession

    users = multisession.generate(n_users=3, n_sessions=20, filler_turns=4, seed=5)
    assert users == multisession.generate(n_users=3, n_sessions=20, filler_turns=4, seed=5)
    assert users != multisession.generate(n_users=3, n_sessions=20, filler_turns=4, seed=6)
    for user in users:
        assert len(user.sessions) == 20 and all(len(session) == 5 for session in user.sessions)
        assert len({q.attribute for q in user.questions}) == 20  # one fact per attribute
        for question in user.questions:
            messages = [message for message, _ in user.sessions[question.session]]
            assert question.statement in messages
            assert question.answer in question.statement and question.answer not in question.question


def test_multisession_refuses_more_sessions_than_attributes():
    from memlm.data import multisession

    with pytest.raises(ValueError, match="n_sessions"):
        multisession.generate(n_sessions=len(multisession.ATTRIBUTES) + 1)
