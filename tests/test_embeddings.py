"""The sentence encoder's cache of chat-sized calls (memlm/embeddings.py): the same vectors, fewer passes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from memlm import embeddings
from memlm.embeddings import CACHE_MAX_BATCH, SentenceEncoder


class CountingModel:
    """Stands in for the sentence-transformers model: a fixed vector per text, and a log of what it encoded."""

    def __init__(self, dimension: int = 8):
        self.dimension = dimension
        self.calls: list[list[str]] = []

    def encode(self, texts, **_):
        self.calls.append(list(texts))
        vectors = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dimension)
                            for t in texts]).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def encoder(cache_size: int = embeddings.CACHE_SIZE) -> SentenceEncoder:
    instance = SentenceEncoder.__new__(SentenceEncoder)  # no model load: the cache is what is tested
    instance.model, instance.dimension = CountingModel(), 8
    instance._lock = threading.Lock()
    instance.cache_size = cache_size
    instance._cache = embeddings.OrderedDict()
    instance._packed = None
    return instance


def test_a_text_seen_before_is_not_encoded_again_and_gets_the_same_vector():
    enc = encoder()
    first = enc.encode(["What is my secret code?", "I live in Oslo."])
    again = enc.encode(["I live in Oslo.", "What is my secret code?", "new text"])
    assert enc.model.calls == [["What is my secret code?", "I live in Oslo."], ["new text"]]
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[1], first[0])
    assert again.shape == (3, 8) and again.dtype == np.float32


def test_repeated_texts_in_one_call_are_encoded_once():
    enc = encoder()
    vectors = enc.encode(["a", "b", "a"])
    assert enc.model.calls == [["a", "b"]]
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_the_cache_keeps_the_most_recently_used_texts_only():
    enc = encoder(cache_size=3)
    for text in ("a", "b", "c"):
        enc.encode(text)
    enc.encode("a")  # a is now the most recent: b goes first
    enc.encode("d")
    assert list(enc._cache) == ["c", "a", "d"]
    enc.encode("b")
    assert enc.model.calls[-1] == ["b"]
    assert len(enc._cache) == 3


def test_writing_to_a_result_does_not_change_what_the_cache_returns():
    enc = encoder()
    vectors = enc.encode(["x"])
    kept = vectors.copy()
    vectors[:] = 0
    np.testing.assert_array_equal(enc.encode(["x"]), kept)


@pytest.mark.parametrize("cache_size", [0, embeddings.CACHE_SIZE])
def test_bulk_calls_and_a_zero_cache_bypass_it(cache_size):
    enc = encoder(cache_size=cache_size)
    texts = [f"fact {i}" for i in range(CACHE_MAX_BATCH + 1)] if cache_size else ["q"]
    enc.encode(texts)
    enc.encode(texts)
    assert len(enc.model.calls) == 2
    assert not enc._cache


def test_the_real_minilm_gives_the_same_vectors_through_the_cache():
    pytest.importorskip("sentence_transformers")
    try:
        path = embeddings.minilm_path()
    except Exception as error:  # noqa: BLE001 - no offline MiniLM here
        pytest.skip(str(error))
    enc = SentenceEncoder(path)
    texts = ["What is my secret code?", "My sister Maria just moved to Lisbon."]
    plain = enc._encode(texts, 64)
    np.testing.assert_allclose(enc.encode(texts), plain, atol=1e-6)
    np.testing.assert_allclose(enc.encode(texts[::-1]), plain[::-1], atol=1e-6)


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    pytest.importorskip("sentence_transformers")
    try:
        return SentenceEncoder(embeddings.minilm_path(), cache_size=0)
    except Exception as error:  # noqa: BLE001 - no offline MiniLM here
        pytest.skip(str(error))


TURN = ["Hi! My sister Maria just moved to Lisbon. I'm allergic to peanuts since 1999. What should I cook?",
        "My sister Maria just moved to Lisbon.", "I'm allergic to peanuts since 1999.", "Ok",
        "Café crème, s'il vous plaît!"]


def test_a_chat_turns_texts_packed_in_one_row_get_the_padded_batchs_vectors(minilm):
    assert minilm._packed is not None  # the offline MiniLM is the plain pipeline: packing is on
    padded = minilm.model.encode(TURN, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    packed = minilm._packed(TURN)
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    np.testing.assert_allclose(minilm.encode(TURN), padded, atol=1e-5)


def test_texts_too_long_to_pack_go_through_the_padded_batch(minilm):
    long = ["word " * 300, "another " * 300, "third " * 300]  # 3 x 256 tokens (truncated) > PACK_MAX_TOKENS
    assert minilm._packed(long) is None
    padded = minilm.model.encode(long, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(minilm.encode(long), padded, atol=1e-6)


def test_only_the_plain_mean_pooling_pipeline_is_packed(minilm):
    from sentence_transformers import SentenceTransformer

    class Other(list):
        tokenizer, max_seq_length = None, 128

    assert embeddings._PackedBert.for_model(Other([object(), object()])) is None
    unnormalised = SentenceTransformer(modules=[minilm.model[0], minilm.model[1]], device="cpu")
    assert embeddings._PackedBert.for_model(unnormalised) is None  # its vectors are not the packed ones
