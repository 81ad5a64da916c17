"""The evaluation's needles (`memlm.data.needles`) stay what they were: the training needles
(`memlm.data.needle_train`) were added beside them, and results across rounds compare only while the
evaluation asks the same questions in the same texts."""

from __future__ import annotations

import hashlib
import json

import pytest

from memlm.data import needles

# sha256 of 200 samples at length 0 (seed 0) and 20 at 1,500 words (seed 7) per task, computed before the
# training needles were written.
PINNED = {"facts": "a1e636aceef38e989fac99a8ccf6fb4b3777b315d4e34fed94a9d0d8f34c8cf1",
          "passkey": "89193872b62b649ab47c9b4af932ccebc79b97dcd12962690782ffe9f734daa6"}


def word_count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("task", needles.TASKS)
def test_the_evaluation_needles_are_unchanged_for_the_same_seeds(task):
    samples = needles.generate(task, 200, 0, 0, word_count) + needles.generate(
        task, 20, 1500, 7, word_count, haystack=["Rain fell on the roof. It was cold. The dog slept by the fire."])
    blob = json.dumps([[s.task, s.context, s.question, s.answer, list(s.facts), s.target_tokens, s.seed]
                       for s in samples])
    assert hashlib.sha256(blob.encode()).hexdigest() == PINNED[task]


def test_the_first_evaluation_needles_read_as_they_did():
    [facts] = needles.generate("facts", 1, 0, 0, word_count)
    assert facts.question == "What colour did Captain Grimani paint the charger?" and facts.answer == "blue"
    assert facts.facts[0] == "Mr. Kilawee has been learning to play the ukulele since the spring."
    [passkey] = needles.generate("passkey", 1, 0, 0, word_count)
    assert passkey.facts == ("The pass key is 73156. Remember it. 73156 is the pass key.",)
    assert (passkey.question, passkey.answer) == ("What is the pass key?", "73156")
