"""Contenders answer many streams at once, one per batch row, exactly as each would alone."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_memory_weights
from tiny import tiny_model

from memlm.eval.contenders import Contender

CONTEXTS = ["Mary went to the kitchen. The sky was grey over the hills. " * 6,
            "John moved to the garden. " * 3 + "Rain fell on the roofs of the town all night. " * 4,
            "Sandra journeyed to the office."]
CONVERSATIONS = [["Where is Mary?", "Where was she before?"], ["Where is John?", "Why?"], ["Where is Sandra?", "Ok"]]


@pytest.mark.parametrize("name", ["none", "full", "rag", "recurrent", "slots", "importance", "knn", "bank"])
def test_a_batch_answers_each_row_as_that_row_alone(name, tokenizer):
    torch.manual_seed(0)
    contender = Contender(name, tiny_model("llama"), tokenizer, window=96, max_new_tokens=4)
    randomize_memory_weights(contender.model, scale=0.3)
    if name == "full":
        contender.native_window = contender.window = 160  # so that one context does not fit
    together = contender.answer_batch(CONTEXTS, CONVERSATIONS)
    alone = [contender.answer_batch([context], [conversation])[0]
             for context, conversation in zip(CONTEXTS, CONVERSATIONS, strict=True)]
    assert together == alone
    if name == "full":
        assert together[0] is None and together[2] is not None  # left out where the context does not fit
    else:
        assert all(len(replies) == 2 for replies in together)  # every turn answered
    contender.close()


def test_the_window_leaves_room_for_what_memories_put_in_front(tokenizer):
    plain = Contender("none", tiny_model("llama"), tokenizer, window=256, max_new_tokens=4)
    keeping = Contender("importance", tiny_model("llama"), tokenizer, window=256, max_new_tokens=4)
    assert (plain.segment_length, keeping.segment_length) == (256, 256 - 128)
    assert plain._tail_budget("Where is Mary?") - keeping._tail_budget("Where is Mary?") == 128


@pytest.mark.parametrize("name", ["recurrent", "importance"])
def test_a_zeroed_memory_answers_as_if_it_had_read_nothing(name, tokenizer):
    torch.manual_seed(0)
    contender = Contender(f"{name}:zeroed", tiny_model("llama"), tokenizer, window=96, max_new_tokens=4)
    randomize_memory_weights(contender.model, scale=0.3)
    zeroed = contender.answer_batch(CONTEXTS, CONVERSATIONS)
    written = []
    contender.model.memorize = lambda ids, *args, **kwargs: written.append(ids.shape)  # reads nothing
    contender.zeroed = False
    assert contender.answer_batch(CONTEXTS, CONVERSATIONS) == zeroed
    assert written  # the contexts are long enough that something was handed to the memory


def test_zeroed_names_a_memory_ablation_and_is_refused_for_baselines(tokenizer):
    from memlm.errors import ConfigError
    from memlm.eval.harness import check_contenders

    assert check_contenders(["recurrent", "recurrent:zeroed"]) == ["recurrent", "recurrent:zeroed"]
    with pytest.raises(ConfigError, match="baselines"):
        check_contenders(["none:zeroed"])
    plain = Contender("recurrent", tiny_model("llama"), tokenizer, window=96)
    zeroed = Contender("recurrent:zeroed", tiny_model("llama"), tokenizer, window=96)
    assert plain.describe() != zeroed.describe() and "zeroed" not in plain.describe()
