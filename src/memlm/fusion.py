"""Prompt fusion: how retrieved facts reach a model through its prompt, and the logit bonus that
helps a small model copy them.

* `fuse_facts` puts the facts in the system message and replays them in a short recap exchange just
  before the question: a small model repeats what it has just "said" far more reliably than it reads
  a system message. The most relevant fact goes last, next to the question, because the model tends
  to say the fact it read last.
* `FactTokenBias` adds a small bonus to the logits of the facts' tokens while the model answers: a
  small model tends to answer from its prior ("a glass of wine") even with the fact ("kefir") in front
  of it, and the bonus tips it toward copying.

What each choice buys, measured: docs/bank.md ("Prompt fusion").
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from memlm.errors import MemoryStateError

RECAP_QUESTION = "Is there anything you remember about me?"


def facts_block(facts: list[str]) -> str:
    """How retrieved facts are listed for the model, in the order given."""
    listed = "\n".join(f"- {fact}" for fact in facts)
    return (f"You remember facts about the user from earlier conversations:\n{listed}\n"
            f"Answer questions about the user from these facts, briefly, speaking to the user as \"you\".")


def fuse_facts(messages: list[dict[str, str]], facts: list[str], addressed: list[str] | None = None
               ) -> list[dict[str, str]]:
    """Chat messages with `facts` (most relevant first) fused in: listed in the system message, and
    recapped by the assistant just before the last user message, most relevant last.

    `addressed` are the same facts in the second person ("Your dog is called Biscuit."), for the
    recap: the assistant says them *to* the user, so the model answers that way too ("Your favourite
    colour is teal", not "The user's ..."). The system message keeps the third person ("The user's
    dog ..."), where "your" would mean the assistant's own.
    """
    if not facts:
        return messages
    nearest_last = list(reversed(facts))
    recapped = list(reversed(addressed)) if addressed is not None else nearest_last
    block = facts_block(nearest_last)
    if messages and messages[0]["role"] == "system":
        system, rest = {"role": "system", "content": messages[0]["content"] + "\n\n" + block}, messages[1:]
    else:
        system, rest = {"role": "system", "content": block}, list(messages)
    recap = [{"role": "user", "content": RECAP_QUESTION},
             {"role": "assistant", "content": "Yes: " + " ".join(recapped)}]
    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=len(rest))
    return [system, *rest[:last_user], *recap, *rest[last_user:]]


def fact_token_ids(tokenizer: Any, facts: list[str]) -> list[int]:
    """The token ids `FactTokenBias` favours: each fact's tokens with and without a leading space,
    since either form may start a word in the reply."""
    return [token for fact in facts for text in (fact, " " + fact)
            for token in tokenizer(text, add_special_tokens=False).input_ids]


class FactTokenBias(LogitsProcessor):
    """Adds `bias` to the logits of a fixed set of tokens (the tokens of the retrieved facts): one set
    for every row, or a list of sets, one per batch row (rows repeated by beams share their row's)."""

    def __init__(self, token_ids: list[int] | list[list[int]], bias: float):
        per_row = token_ids if token_ids and isinstance(token_ids[0], list) else [token_ids]
        self.rows = [torch.tensor(sorted(set(ids)), dtype=torch.long) for ids in per_row]
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bonus(scores.shape[0], scores.shape[1], scores.device, scores.dtype)

    def bonus(self, batch_size: int, vocab_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """What `__call__` adds to a (batch_size, vocab_size) score matrix; fast decoding (`memlm.decode`)
        adds it inside its recorded step."""
        bonus = torch.zeros(len(self.rows), vocab_size, dtype=dtype, device=device)
        for row, ids in enumerate(self.rows):
            bonus[row, ids.to(device)] = self.bias
        if batch_size % len(self.rows):
            raise MemoryStateError(f"fact-token bonus for {len(self.rows)} row(s) but the batch has {batch_size}")
        return bonus.repeat_interleave(batch_size // len(self.rows), dim=0)
