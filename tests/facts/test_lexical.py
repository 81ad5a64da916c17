"""The BM25 index of hybrid search: scores as bm25s computes them, kept up to date fact by fact."""

from __future__ import annotations

import numpy as np
import pytest

from memlm.facts.lexical import LexicalIndex, tokenize
from memlm.facts.ranking import check_fusion, fuse_rankings

CORPUS = ["I play Catan with friends every Friday.", "My dog is called Biscuit.", "I live in Tallinn these days.",
          "I played the flute growing up.", "My favourite board game is Go.", "Friday is pizza night at home.",
          "The user's sister Ingrid plays chess.", "I grow basil on my balcony."]


def _same(found, expected):
    assert [i for i, _ in found] == [i for i, _ in expected]
    assert [s for _, s in found] == pytest.approx([s for _, s in expected])


def test_tokens_fold_case_drop_stop_and_person_words_and_stem():
    assert tokenize("I'm PLAYING Catan, my dog's favourite!") == ["play", "catan", "dog", "favourit"]
    assert tokenize("The user lives; I live") == ["live", "live"]


def test_scores_equal_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    index = LexicalIndex()
    for position, text in enumerate(CORPUS):
        index.add(position, text)
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    reference.index([tokenize(text) for text in CORPUS], show_progress=False)
    for query in ("What board game do I play on Friday?", "Which dog?", "basil balcony", "Ingrid chess"):
        expected = reference.get_scores(tokenize(query))
        found = dict(index.search(query, len(CORPUS)))
        assert found, query
        for position, score in enumerate(expected):
            assert found.get(position, 0.0) == pytest.approx(float(score), rel=1e-5, abs=1e-6), (query, position)


def test_removing_and_replacing_documents_keeps_scores_exact():
    index = LexicalIndex()
    for position, text in enumerate(CORPUS):
        index.add(position, text)
    index.remove([0, 4])
    index.add(2, "I moved to Oslo.")  # replaces what id 2 held
    fresh = LexicalIndex()
    for position, text in enumerate(CORPUS):
        if position not in (0, 2, 4):
            fresh.add(position, text)
    fresh.add(2, "I moved to Oslo.")
    for query in ("Friday game", "where do I live, Oslo or Tallinn?", "dog"):
        _same(index.search(query, 10), fresh.search(query, 10))
    assert len(index) == 6 and 0 not in index and not index.search("Catan", 5)


def test_compaction_after_many_removals_changes_no_score():
    index, reference = LexicalIndex(), LexicalIndex()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "kefir", "oboe"]
    texts = {i: " ".join(rng.choice(words, 4)) for i in range(3000)}
    for i, text in texts.items():
        index.add(i, text)
    index.remove(range(0, 2000))  # triggers compaction
    for i in range(2000, 3000):
        reference.add(i, texts[i])
    assert len(index._ids) == 1000  # the removed slots are gone
    _same(index.search("kefir oboe", 20), reference.search("kefir oboe", 20))


def test_hybrid_fusion_lets_a_rare_word_decide_between_close_vectors():
    dense = [(1, 0.50), (2, 0.48)]
    lexical = [(2, 3.0)]
    assert [i for i, _ in fuse_rankings(dense, lexical, "dense")] == [1, 2]
    assert [i for i, _ in fuse_rankings(dense, lexical, "hybrid:0.1")] == [2, 1]
    assert [i for i, _ in fuse_rankings(dense, lexical, "rrf")] == [2, 1]
    # a lexical-only hit gets its own cosine when known
    assert fuse_rankings(dense, [(3, 1.0)], "hybrid:0.1", {3: 0.05})[-1] == (3, pytest.approx(0.15))
    with pytest.raises(Exception, match="fusion"):
        check_fusion("hybrid:x")


def test_writes_between_searches_give_the_scores_of_an_index_built_at_once():
    """Searches between adds and removals reuse the postings arrays they built (extended by what was
    appended since) and the lengths array kept in place: every score must still be exactly that of
    an index built from the final documents."""
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "kefir", "oboe", "lisbon", "oslo"]
    index, texts = LexicalIndex(), {}
    for step in range(400):
        fact_id = int(rng.integers(0, 300))
        if fact_id in texts and rng.random() < 0.3:
            index.remove([fact_id])
            del texts[fact_id]
        else:
            texts[fact_id] = " ".join(rng.choice(words, int(rng.integers(1, 6))))
            index.add(fact_id, texts[fact_id])
        if step % 7 == 0:
            index.search(" ".join(rng.choice(words, 3)), 10)
    fresh = LexicalIndex()
    for fact_id in sorted(texts, key=lambda i: index._slot[i]):  # the same slot order
        fresh.add(fact_id, texts[fact_id])
    for query in ("alpha beta", "kefir oboe lisbon", "oslo", "gamma delta alpha beta"):
        assert index.search(query, 50) == fresh.search(query, 50)


def test_a_search_after_one_new_document_builds_no_array_over_all_documents(monkeypatch):
    index = LexicalIndex()
    for i in range(5000):
        index.add(i, f"fact {i} about kefir and oboe")
    index.search("kefir oboe", 5)
    index.add(5000, "a new fact about kefir")
    sizes = []
    real = np.asarray
    monkeypatch.setattr(np, "asarray", lambda value, *args, **kwargs: sizes.append(len(value)) or real(value, *args,
                                                                                                   **kwargs))
    assert index.search("kefir oboe", 5)
    assert max(sizes, default=0) < 100, sizes  # only what was appended since the last search
