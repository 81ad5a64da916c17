"""The BM25 index of hybrid search: scores as bm25s computes them, kept up to date fact by fact."""

from __future__ import annotations

import math

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


def _bm25_by_hand(documents: dict[int, str], query: str, k1: float = 1.5, b: float = 0.75) -> dict[int, float]:
    """Lucene's BM25, written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), and per query term
    idf * tf / (tf + k1 * (1 - b + b * length / average length))."""
    terms = {fact_id: tokenize(text) for fact_id, text in documents.items()}
    average = sum(len(t) for t in terms.values()) / len(terms)
    scores: dict[int, float] = {}
    for term in dict.fromkeys(tokenize(query)):
        df = sum(term in t for t in terms.values())
        if not df:
            continue
        idf = math.log(1 + (len(terms) - df + 0.5) / (df + 0.5))
        for fact_id, words in terms.items():
            tf = words.count(term)
            if tf:
                norm = k1 * (1 - b + b * len(words) / average)
                scores[fact_id] = scores.get(fact_id, 0.0) + idf * tf / (tf + norm)
    return scores


def _check_against_hand(index: LexicalIndex, documents: dict[int, str], query: str, k: int) -> None:
    reference = _bm25_by_hand(documents, query)
    expected = sorted(reference.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
    found = index.search(query, k)
    assert len(found) == len(expected), query
    assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-5), query
    for fact_id, score in found:  # each one is the document it claims to be, best first
        assert reference[fact_id] == pytest.approx(score, rel=1e-5), query


@pytest.mark.parametrize("size", [12, 600])  # few postings (scored term by term), many (scored in one array)
def test_scores_and_top_k_equal_bm25_by_hand_with_repeated_terms(size):
    rng = np.random.default_rng(size)
    words = ["alpha", "beta", "gamma", "delta", "kefir", "oboe", "sitar", "basil"]
    documents = {int(i): " ".join(rng.choice(words, int(rng.integers(1, 9)))) for i in rng.permutation(size)}
    index = LexicalIndex()
    for fact_id, text in documents.items():  # added in no particular order of ids
        index.add(fact_id, text)
    for query in ("kefir", "kefir oboe", "alpha beta gamma sitar", "basil basil delta"):
        hits = len(_bm25_by_hand(documents, query))
        for k in (1, 3, 10, hits - 1, size):  # hits - 1: all but one of the matching documents
            _check_against_hand(index, documents, query, k)


def test_search_sees_every_add_and_remove_after_an_earlier_search():
    documents = {0: "kefir", 1: "kefir oboe", 2: "oboe sitar"}
    index = LexicalIndex()
    for fact_id, text in documents.items():
        index.add(fact_id, text)
    _check_against_hand(index, documents, "kefir oboe", 5)
    index.add(3, "kefir kefir")  # "kefir" again: its postings as read by the last search are stale
    documents[3] = "kefir kefir"
    _check_against_hand(index, documents, "kefir oboe", 5)
    index.remove([1])  # the latest document holding "oboe" is not the last one added
    del documents[1]
    _check_against_hand(index, documents, "kefir oboe", 5)  # searched right after the removal
    index.remove([3])  # the latest document holding "kefir"
    del documents[3]
    _check_against_hand(index, documents, "kefir oboe", 5)
    assert index.search("kefir", 5) == [(0, pytest.approx(_bm25_by_hand(documents, "kefir")[0]))]


def test_removing_unknown_ids_removes_the_known_ones_after_them():
    index = LexicalIndex()
    index.add(1, "kefir oboe")
    index.add(2, "oboe sitar")
    index.remove([99, 1, 77])
    assert 1 not in index and len(index) == 1 and [i for i, _ in index.search("kefir oboe", 5)] == [2]


def test_compaction_keeps_fact_0_and_what_it_rebuilt_can_be_removed_later():
    index = LexicalIndex()
    for i in range(1200):
        index.add(i, "kefir oboe" if i % 2 else "kefir sitar")
    index.remove(range(1, 800))  # fact 0 stays; compaction runs
    assert len(index._ids) == 401  # the removed slots are gone
    documents = {i: ("kefir oboe" if i % 2 else "kefir sitar") for i in [0, *range(800, 1200)]}
    _check_against_hand(index, documents, "sitar", 3)
    assert index.search("sitar", 1)[0][0] == 0
    index.remove([0, 801])  # ids placed by the compaction
    assert 0 not in index and 801 not in index
    del documents[0], documents[801]
    _check_against_hand(index, documents, "sitar oboe", 1000)


def test_search_returns_at_most_k_and_nothing_for_k_below_1():
    index = LexicalIndex()
    index.add(5, "kefir")
    assert index.search("kefir", 1) == [(5, pytest.approx(_bm25_by_hand({5: "kefir"}, "kefir")[5]))]  # one document
    index.add(6, "kefir oboe")
    assert [i for i, _ in index.search("kefir", 1)] == [5]  # the shorter document scores higher
    assert index.search("kefir", 0) == [] and index.search("kefir", -1) == []


def test_ties_go_to_the_smaller_id_whatever_the_order_of_adding():
    index = LexicalIndex()
    for fact_id in (9, 4, 7):
        index.add(fact_id, "kefir oboe")
    assert [i for i, _ in index.search("kefir", 3)] == [4, 7, 9]


def test_a_curly_apostrophe_reads_as_a_straight_one_and_a_possessive_of_a_stop_word_is_one():
    assert tokenize("my dog\u2019s bone") == tokenize("my dog's bone") == ["dog", "bone"]
    assert tokenize("each other's gardens") == ["garden"]  # "other" is a stop word, so is "other's"
