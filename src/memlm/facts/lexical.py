"""The lexical half of hybrid fact search: a per-user BM25 index that grows and shrinks fact by fact.

Dense vectors relate meanings but miss rare words: MiniLM puts "Catan" as close to "board game" as
"sitar". A lexical index catches exactly those (names, numbers, made-up words) and the two rankings
are fused (`memlm.facts.bank`). BM25 with Lucene's weighting, as `bm25s` computes it
(`tests/facts/test_lexical.py` checks the scores agree), but kept incrementally: a chat adds one fact
at a time and a store is shared by processes, so the index follows the store's change log exactly
like the FAISS index does, instead of being rebuilt for every write.

Tokens: NFKC + case folding, words of letters and digits, English stop words and the person words
every fact of a user shares ("I", "my", "user", "you") dropped, Snowball (Porter 2) stems so that
"plays" meets "play" and "living" meets "lives" (PyStemmer; a few suffix rules without it).

Example:
    >>> index = LexicalIndex()
    >>> index.add(7, "I play Catan with friends every Friday.")
    >>> index.search("What board game do I play?", 5)
    [(7, ...)]
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

# English stop words (the usual IR list), plus the words that name the user or the assistant: every
# fact is about the user, so these carry no information about which fact answers a question.
_STOP_TEXT = """
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more
most mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same
shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've this those through to too under
until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which
while who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself
yourselves user user's users im ive id ill dont doesnt didnt also just really actually
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@lru_cache(maxsize=1)
def _stemmer():
    try:
        import Stemmer  # PyStemmer: Snowball stemmers in C
    except ImportError:  # pragma: no cover - PyStemmer is a dependency; this keeps the index usable without it
        return None
    return Stemmer.Stemmer("english")


@lru_cache(maxsize=100_000)
def stem(word: str) -> str:
    stemmer = _stemmer()
    if stemmer is not None:
        return stemmer.stemWord(word)
    for suffix in ("ing", "ies", "es", "ed", "s"):  # pragma: no cover
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word  # pragma: no cover


def tokenize(text: str) -> list[str]:
    """The index terms of `text`: folded, stop words dropped, stemmed; possessive 's removed."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'"))
    terms = []
    for word in words:
        if word.endswith("'s"):
            word = word[:-2]
        if word and word not in STOP_WORDS:
            terms.append(stem(word))
    return terms


class LexicalIndex:
    """BM25 (Lucene's idf and length normalisation, as `bm25s` with `method="lucene"`) over documents
    added and removed one at a time, keyed by fact id.

    Postings are kept per term as Python lists and turned into NumPy arrays the first time a query
    needs them, so a search costs one vectorised pass over the postings of its terms. A new document
    only appends to its terms' postings, so their arrays are extended by what was appended (a removal
    still rebuilds its terms' arrays), and the document lengths are an array updated in place: a
    search right after a write no longer rebuilds arrays over every document (1-5 ms at 100K facts,
    after every learned fact).
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self._slot: dict[int, int] = {}  # fact id -> slot (position in the per-slot arrays)
        self._ids: list[int] = []  # slot -> fact id (-1: removed)
        self._lengths: list[int] = []  # slot -> document length in terms (0: removed)
        self._terms: list[tuple[str, ...]] = []  # slot -> its distinct terms (to remove it later)
        self._postings: dict[str, tuple[list[int], list[int]]] = {}  # term -> (slots, term frequencies)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # term -> cached postings as arrays
        self._live = 0
        self._total_length = 0
        self._lengths_array = np.zeros(0, dtype=np.float32)  # slot -> length, capacity beyond len(self._ids)

    def __len__(self) -> int:
        return self._live

    def __contains__(self, fact_id: int) -> bool:
        return fact_id in self._slot

    def add(self, fact_id: int, text: str) -> None:
        """Index `text` under `fact_id` (replacing what that id held)."""
        if fact_id in self._slot:
            self.remove([fact_id])
        terms = tokenize(text)
        counts: dict[str, int] = {}
        for term in terms:
            counts[term] = counts.get(term, 0) + 1
        slot = len(self._ids)
        self._slot[fact_id] = slot
        self._ids.append(fact_id)
        self._lengths.append(len(terms))
        self._terms.append(tuple(counts))
        for term, count in counts.items():
            slots, frequencies = self._postings.setdefault(term, ([], []))
            slots.append(slot)
            frequencies.append(count)
        self._live += 1
        self._total_length += len(terms)
        if slot >= len(self._lengths_array):
            grown = np.zeros(max(1024, 2 * len(self._lengths_array)), dtype=np.float32)
            grown[:len(self._lengths_array)] = self._lengths_array
            self._lengths_array = grown
        self._lengths_array[slot] = len(terms)

    def remove(self, fact_ids: Iterable[int]) -> None:
        for fact_id in fact_ids:
            slot = self._slot.pop(int(fact_id), None)
            if slot is None:
                continue
            for term in self._terms[slot]:
                slots, frequencies = self._postings[term]
                at = slots.index(slot) if slots[-1] != slot else len(slots) - 1
                del slots[at], frequencies[at]
                if not slots:
                    del self._postings[term]
                self._arrays.pop(term, None)
            self._total_length -= self._lengths[slot]
            self._ids[slot], self._lengths[slot], self._terms[slot] = -1, 0, ()
            self._lengths_array[slot] = 0
            self._live -= 1
        if len(self._ids) > 1024 and self._live < len(self._ids) // 2:
            self._compact()

    def _compact(self) -> None:
        """Drop the slots of removed documents (after many removals) by re-adding the live ones."""
        live = [(self._ids[s], self._terms[s], self._lengths[s]) for s in range(len(self._ids)) if self._ids[s] >= 0]
        frequencies = {}
        for term, (slots, counts) in self._postings.items():
            for slot, count in zip(slots, counts, strict=True):
                frequencies[(slot, term)] = count
        old_slots = {fact_id: slot for fact_id, slot in self._slot.items()}
        self._slot, self._ids, self._lengths, self._terms = {}, [], [], []
        self._postings, self._arrays = {}, {}
        for fact_id, terms, length in live:
            slot = len(self._ids)
            self._slot[fact_id] = slot
            self._ids.append(fact_id)
            self._lengths.append(length)
            self._terms.append(terms)
            for term in terms:
                slots, counts = self._postings.setdefault(term, ([], []))
                slots.append(slot)
                counts.append(frequencies[(old_slots[fact_id], term)])
        self._lengths_array = np.asarray(self._lengths, dtype=np.float32)

    def _posting_arrays(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        slots, frequencies = self._postings[term]
        cached = self._arrays.get(term)
        if cached is None:
            cached = (np.asarray(slots, dtype=np.int64), np.asarray(frequencies, dtype=np.float32))
        elif len(cached[0]) < len(slots):  # documents added since: appended at the end of the lists
            done = len(cached[0])
            cached = (np.concatenate([cached[0], np.asarray(slots[done:], dtype=np.int64)]),
                      np.concatenate([cached[1], np.asarray(frequencies[done:], dtype=np.float32)]))
        else:
            return cached
        self._arrays[term] = cached
        return cached

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(fact id, BM25 score) of the `k` best documents that share a term with `query`, best first."""
        terms = [term for term in dict.fromkeys(tokenize(query)) if term in self._postings]
        if not terms or self._live == 0 or k <= 0:
            return []
        average = self._total_length / self._live
        scores: dict[int, float] | None = None
        if len(terms) == 1 or sum(len(self._postings[t][0]) for t in terms) < 256:
            scores = {}
        dense = None if scores is not None else np.zeros(len(self._ids), dtype=np.float32)
        for term in terms:
            slots, frequencies = self._posting_arrays(term)
            idf = math.log(1.0 + (self._live - len(slots) + 0.5) / (len(slots) + 0.5))
            norms = self.k1 * (1.0 - self.b + self.b * self._lengths_array[slots] / average)
            contributions = idf * frequencies / (frequencies + norms)
            if dense is not None:
                dense[slots] += contributions
            else:
                for slot, value in zip(slots.tolist(), contributions.tolist(), strict=True):
                    scores[slot] = scores.get(slot, 0.0) + value
        if dense is not None:
            hit = np.flatnonzero(dense)
            if hit.size > k:
                hit = hit[np.argpartition(-dense[hit], k - 1)[:k]]
            pairs = [(self._ids[int(s)], float(dense[s])) for s in hit]
        else:
            pairs = [(self._ids[slot], value) for slot, value in scores.items()]
        pairs.sort(key=lambda pair: (-pair[1], pair[0]))
        return pairs[:k]
