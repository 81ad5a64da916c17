"""BABILong told about people and places training never saw (`babilong-unseen`), the free-form needle
tasks, and `--cast` on the command line."""

from __future__ import annotations

import json
import re

import pytest
from tiny import tiny_model

from memlm.cli.eval import with_cast
from memlm.data import needles
from memlm.data.cast import BABI_FEMALE, BABI_MALE, BABI_PLACES
from memlm.eval.harness import Harness, Suite
from memlm.eval.tasks.babilong import BabilongTask, UnseenCastTask
from memlm.eval.tasks.needle import NeedleTask


def test_cast_rewrites_babilong_tasks_and_leaves_the_rest():
    assert with_cast(["babilong", "recall"], "unseen") == ["babilong-unseen", "recall"]
    assert with_cast(["babilong/qa2", "ppl"], "both") == ["babilong/qa2", "babilong-unseen/qa2", "ppl"]
    assert with_cast(["babilong-unseen/qa1"], "standard") == ["babilong/qa1"]
    assert with_cast(["babilong"], None) == ["babilong"]
    with pytest.raises(Exception, match="standard, unseen or both"):
        with_cast(["babilong"], "fictional")


def test_an_unseen_cast_reply_is_scored_against_its_own_answers():
    task = UnseenCastTask()
    sample = task.generate("qa1", 3, 0, 0, lambda text: len(text.split()), transform=task.transform)[0]
    other = next(label for label in sample.labels if label != sample.answer and label not in sample.question)
    assert task.correct(sample, f"In the {sample.answer}.")
    assert not task.correct(sample, f"The {other}.")
    assert not task.correct(sample, f"{sample.answer} or {other}.")  # hedging between the story's places
    assert not BabilongTask().correct(sample, "kitchen.")


def test_the_harness_asks_both_casts_the_same_stories(tokenizer, tmp_path):
    suite = Suite("tiny", babilong_tasks=("qa1",), unseen_babilong_tasks=("qa1",), lengths=(0, 300), samples=2,
                  max_new_tokens=4)
    Harness(tiny_model("llama"), tokenizer, suite, ["none"], tmp_path, window=160,
            families=["babilong", "babilong-unseen"], progress=False).run()
    standard = json.loads((tmp_path / "pairs" / "babilong__qa1__none.json").read_text())["details"]
    unseen = json.loads((tmp_path / "pairs" / "babilong-unseen__qa1__none.json").read_text())["details"]
    assert len(standard) == len(unseen) == 4
    babi = re.compile(r"\b(" + "|".join((*BABI_FEMALE, *BABI_MALE, *BABI_PLACES)) + r")\b")
    assert all(babi.search(d["question"] + d["answer"]) for d in standard)
    assert not any(babi.search(d["question"] + d["answer"]) for d in unseen)


@pytest.mark.parametrize("task", needles.TASKS)
def test_needles_are_answerable_from_their_facts_and_hidden_at_length(task):
    count = lambda text: len(text.split())  # noqa: E731
    samples = needles.generate(task, 20, 2000, seed=4, count_tokens=count, haystack=["Rain fell. It was cold."])
    assert samples == needles.generate(task, 20, 2000, seed=4, count_tokens=count, haystack=["Rain fell. It was cold."])
    for sample in samples:
        assert abs(count(sample.context) - 2000) <= 40
        assert all(fact in sample.context for fact in sample.facts)
        assert any(needles.answer_correct(fact, sample.answer) for fact in sample.facts)
        if task == "facts":
            assert 3 <= len(sample.facts) <= 5
            names = re.findall(r"\b[A-Z][\w.-]*", sample.question)[1:]  # who is asked about
            assert names and sum(all(name in fact for name in names) for fact in sample.facts) == 1
    assert len({s.answer for s in samples}) > 10  # varied answers, not one template
    assert needles.answer_correct("It is 48213, I think.", "48213") and not needles.answer_correct("4821", "48213")


def test_the_needle_family_runs_only_when_named(tokenizer, tmp_path):
    suite = Suite("tiny", needle_tasks=("passkey",), lengths=(0,), samples=2, max_new_tokens=6)
    harness = Harness(tiny_model("llama"), tokenizer, suite, ["none"], tmp_path, window=160, families=["needle"],
                      progress=False)
    assert harness.tasks() == [("needle", "needle/passkey")]
    harness.run()
    pair = json.loads((tmp_path / "pairs" / "needle__passkey__none.json").read_text())
    assert [d["correct"] for d in pair["details"]] == [needles.answer_correct(d["reply"], d["answer"])
                                                      for d in pair["details"]]
    assert isinstance(NeedleTask().prompt(needles.generate("passkey", 1, 0, 0, len)[0]), str)
