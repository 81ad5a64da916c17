"""Units of text the `importance` memory keeps or drops whole: tokens, words or sentences.

A selection made token by token keeps what the scorer rates, piece by piece: a name of several
sub-word tokens ("Zsigmond" = "Z" + "sig" + "mond") can lose its first pieces while its last one is
kept, and "...mond travelled to the ..." answers nothing. Selecting whole units fixes that by
construction: every token of a unit shares one decision, made from the unit's score, and a capacity
cut drops whole units, never the older part of one.

A unit's boundaries come from the tokenizer's vocabulary, read once per tokenizer: a word begins at a
token whose text starts with whitespace or punctuation (or follows punctuation); a sentence begins
after a token that ends one (".", "!", "?", a line break), and a sentence longer than
`MAX_SENTENCE_TOKENS` continues as a new unit so one long haystack sentence cannot fill the memory.

A word's score is its best token's (the last piece of a name often carries the evidence); a
sentence's is the mean of its tokens' (a fact is rated as a whole, so one odd token neither keeps nor
drops it).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

UNITS = ("token", "word", "sentence")
MAX_SENTENCE_TOKENS = 48
_SENTENCE_END = (".", "!", "?", "\n", ".\"", "!\"", "?\"", ".'", ".)", ";")

_tables: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = \
    weakref.WeakKeyDictionary()


def boundary_tables(tokenizer: Any, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token id: (starts a word, ends a word, ends a sentence), each (V,) bool; read once per tokenizer."""
    cached = _tables.get(tokenizer)
    if cached is not None and cached[0].shape[0] >= vocab_size:
        return cached
    size = max(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[index] for index in range(size)], clean_up_tokenization_spaces=False)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    starts, ends, sentence_ends = (torch.zeros(size, dtype=torch.bool) for _ in range(3))
    for index, text in enumerate(texts):
        if index in special or not text:
            starts[index] = ends[index] = sentence_ends[index] = index in special
            continue
        starts[index] = not (text[0].isalnum() or text[0] == "\ufffd")  # "\ufffd": part of a multi-byte character
        ends[index] = not (text[-1].isalnum() or text[-1] == "\ufffd")
        sentence_ends[index] = text.rstrip(" ").endswith(_SENTENCE_END)
    _tables[tokenizer] = (starts, ends, sentence_ends)
    return starts, ends, sentence_ends


def unit_index(input_ids: torch.Tensor, valid: torch.Tensor, unit: str, tokenizer: Any,
               vocab_size: int, breaks: torch.Tensor | None = None) -> torch.Tensor:
    """Which unit each token belongs to, (B, T) long, numbered from 0 along each row in stream order.

    A unit never spans an invalid (padding) token, and `breaks` ((B, T) bool) forces a new unit at
    chosen positions (the first new token after the memory's prefix).
    """
    batch_size, length = input_ids.shape
    if unit == "token" or length == 0:
        return torch.arange(length, device=input_ids.device).expand(batch_size, -1)
    starts, ends, sentence_ends = (table.to(input_ids.device) for table in
                                   boundary_tables(tokenizer, vocab_size))
    ids = input_ids.clamp(0, starts.shape[0] - 1)
    previous = torch.nn.functional.pad(ids, (1, 0))[:, :-1]  # (B, T): the token before each one
    begins = starts[ids] | ends[previous] if unit == "word" else sentence_ends[previous]
    begins = begins | ~valid | torch.nn.functional.pad(~valid, (1, 0), value=True)[:, :-1]
    begins[:, 0] = True
    if breaks is not None:
        begins = begins | breaks
    index = begins.long().cumsum(-1) - 1  # (B, T)
    if unit == "sentence":  # long sentences continue as new units every MAX_SENTENCE_TOKENS tokens
        first = torch.arange(length, device=ids.device).expand(batch_size, -1).masked_fill(~begins, 0).cummax(-1).values
        offset = torch.arange(length, device=ids.device) - first
        begins = begins | (offset % MAX_SENTENCE_TOKENS == 0)
        index = begins.long().cumsum(-1) - 1
    return index


def unit_logits(logits: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, unit: str) -> torch.Tensor:
    """Each token's unit score as a logit, (B, T): the best token of a word, the mean of a sentence."""
    if unit == "token":
        return logits
    scores = logits.float().masked_fill(~valid, -math.inf if unit == "word" else 0.0)
    if unit == "word":
        pooled = torch.full_like(scores, -math.inf).scatter_reduce(1, index, scores, "amax", include_self=True)
    else:
        total = torch.zeros_like(scores).scatter_add(1, index, scores)
        count = torch.zeros_like(scores).scatter_add(1, index, valid.float())
        pooled = total / count.clamp(min=1)
    return torch.where(valid, pooled.gather(1, index), logits.float())


def first_of_unit(index: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the first token of each unit (where a unit's one decision is counted)."""
    return torch.nn.functional.pad(index.diff(dim=-1) != 0, (1, 0), value=True)


def cap_units(keep: torch.Tensor, scores: torch.Tensor, index: torch.Tensor, capacity: int) -> torch.Tensor:
    """At most `capacity` tokens of the `keep` candidates per row, whole units only: units with the
    highest score win, ties go to the newer unit; a unit that does not fit whole is dropped whole."""
    most = int(keep.sum(-1).amax()) if keep.numel() else 0
    if most <= capacity:
        return keep
    batch_size, length = keep.shape
    unit_score = torch.full((batch_size, length), -math.inf, device=keep.device).scatter_reduce(
        1, index, torch.where(keep, scores.float(), -math.inf), "amax", include_self=True)  # (B, U)
    unit_size = torch.zeros(batch_size, length, device=keep.device).scatter_add(1, index, keep.float())  # (B, U)
    newest_first = torch.arange(length - 1, -1, -1, device=keep.device)
    ranked = unit_score[:, newest_first]
    # A stable sort by score keeps the newest-first order among equal scores: ties go to the newer unit.
    order = newest_first[ranked.argsort(dim=-1, descending=True, stable=True)]  # (B, U)
    filled = unit_size.gather(1, order).cumsum(-1)  # tokens used once each unit in rank order is in
    fits = (filled <= capacity) & (unit_score.gather(1, order) > -math.inf)
    unit_kept = torch.zeros_like(keep).scatter(1, order, fits)  # (B, U)
    return keep & unit_kept.gather(1, index)
