"""The chat preset's training turns: the prompt `memlm chat` builds, replies a person would give, and
vocabularies the evaluation never draws."""

from __future__ import annotations

import re

import pytest

from memlm.data import chat_turns, multisession
from memlm.data.cast import split_of
from memlm.eval.chat import UNTOLD_QUESTIONS, says_unknown, well_formed
from memlm.eval.scoring import contains
from memlm.fusion import RECAP_QUESTION

TURNS = chat_turns.generate(300, seed=7)


def of_kind(kind):
    return [turn for turn in TURNS if turn.kind == kind]


def test_every_kind_is_drawn_and_the_draw_is_deterministic():
    assert {turn.kind for turn in TURNS} == set(chat_turns.KINDS)
    assert chat_turns.generate(20, seed=7) == TURNS[:20]
    assert chat_turns.generate(20, seed=8) != TURNS[:20]


def test_values_people_and_templates_are_disjoint_from_the_evaluation():
    banned = chat_turns.evaluation_values()
    for name, attribute in chat_turns.attributes().items():
        assert attribute.values, name
        assert not {v.casefold() for v in attribute.values} & banned, name
        assert not set(attribute.statements + attribute.questions) & chat_turns.evaluation_strings(), name
    for name, relation in chat_turns.other_relations().items():
        assert relation.values and not {v.casefold() for v in relation.values} & banned, name
        assert not set(relation.facts + relation.questions) & chat_turns.evaluation_strings(), name
    sister = chat_turns.attributes()["sister"].values
    assert all(split_of(name) == "train" for name in sister[:200])  # the cast's training split


def test_the_prompt_is_prompt_fusion_as_chat_builds_it():
    for turn in TURNS[:50]:
        system, *rest = turn.messages
        assert system["role"] == "system" if len(rest) > 1 else True
        if any(m["content"] == RECAP_QUESTION for m in turn.messages):
            assert system["content"].startswith("You remember facts about the user")
            recap = [m["content"] for m in turn.messages if m["role"] == "assistant"][-1]
            assert recap.startswith("Yes: ")
        assert turn.messages[-1]["role"] == "user"


def test_answers_say_the_listed_fact_to_the_user_and_nothing_else():
    answers = of_kind("answer")
    assert len(answers) > 50
    for turn in answers:
        assert contains(turn.reply, turn.answer) and turn.answer in turn.messages[0]["content"]
        assert re.search(r"\b(?:you|your)\b", turn.reply, re.IGNORECASE), turn.reply  # to the user
        assert not re.match(r"^(?:I|My)\b", turn.reply), turn.reply  # not as the user
        assert "the user" not in turn.reply.lower() and well_formed(turn.reply)
    # distractors of a similar relation are listed beside the right one in some turns
    assert any(sum(word in t.messages[0]["content"] for word in ("sister", "brother", "mother", "father")) >= 2
               for t in answers)


def test_never_told_questions_get_i_dont_know_and_their_answer_is_not_listed():
    unknown = of_kind("unknown")
    assert len(unknown) > 30
    for turn in unknown:
        assert says_unknown(turn.reply) and turn.answer == "" and well_formed(turn.reply)
    known = [t for t in TURNS if t.kind in ("answer", "other", "tell", "chitchat")]
    assert not any(says_unknown(t.reply) for t in known if t.kind != "chitchat")


def test_acknowledgements_invent_nothing():
    values = {v for a in chat_turns.attributes().values() for v in a.values if len(v) > 3}
    for turn in of_kind("tell"):
        told = turn.messages[-1]["content"]
        named = {v for v in values if v in turn.reply and re.search(rf"\b{re.escape(v)}\b", turn.reply)}
        assert all(v in told for v in named), (turn.reply, told)
        assert not says_unknown(turn.reply)


def test_chit_chat_comes_from_the_training_half_of_the_dataset():
    train, held_out = chat_turns.chitchat_pairs("train"), chat_turns.chitchat_pairs("eval")
    assert len(train) > 1000 and len(held_out) > 100 and not set(train) & set(held_out)
    pairs = set(train)
    for turn in of_kind("chitchat"):
        assert (turn.messages[-1]["content"], turn.reply) in pairs


def test_facts_about_other_people_are_answered_with_that_person_and_value():
    for turn in of_kind("other"):
        listed = turn.messages[0]["content"]
        assert turn.answer in listed and contains(turn.reply, turn.answer)


def test_untold_evaluation_questions_are_never_training_questions_nor_told_attributes():
    training = {q for a in chat_turns.attributes().values() for q in a.questions}
    told = {q for _, questions, _ in multisession.ATTRIBUTES.values() for q in questions}
    for question, _ in UNTOLD_QUESTIONS:
        assert question not in training and question not in told


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown chat turn kind"):
        chat_turns.ChatTurnGenerator({"gossip": 1.0})


def test_some_never_told_questions_come_with_no_facts_at_all():
    bare = [t for t in of_kind("unknown") if not any(m["role"] == "system" for m in t.messages)]
    assert bare and all(says_unknown(t.reply) for t in bare)
