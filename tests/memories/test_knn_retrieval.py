"""kNN attention's retrieval state across passes and batch rows: what one pass searched or rotated must
never be read by another pass, another row or another layer, and a row without memory reads nothing.

Every test compares a memory that has served earlier passes with a fresh one holding the same items and
keeping no stream-block cache: retrieval caches (the leader's shared search, the rotated stream block)
are invisible only if the two agree."""

from __future__ import annotations

import pytest
import torch
from helpers import logits, token_batch
from tiny import tiny_model

import memlm
from memlm import KnnConfig

# 4 layers sharing one search in pairs; far fewer items retrieved than stored, so what is searched matters;
# a short max_distance, so the stream block (items at their true distance) and the far items both occur.
SHARED = dict(attention="joint", layers="all", top_k=3, recent=2, search_every=2, max_distance=6)


def backbone(architecture: str = "llama"):
    """A new copy of the same tiny model (seeded): one memory attached to each, none detaching another."""
    return tiny_model(architecture, num_layers=4)


class NoCache(dict):
    """A stream-block cache that keeps nothing: every read rotates its block anew (the reference)."""

    def __setitem__(self, key, value) -> None:
        pass


def fresh(config: KnnConfig, *writes: torch.Tensor, architecture: str = "llama"):
    memory_model = memlm.attach(backbone(architecture), config)
    memory_model.memories["knn"]._block_cache = NoCache()
    memory_model._begin_call()
    for tokens in writes:
        memory_model.write(tokens)
    return memory_model


def test_passes_read_their_own_searches_and_blocks_never_an_earlier_passes():
    """Two reads of different text without writing, then a write and a third read, on a batch of two rows
    with different memories: each read equals the same read by a fresh memory holding the same items. A
    leader's search kept for its followers past its pass, shared between rows, or a stream block kept
    after the stored items changed, would give another pass's (or row's) items."""
    first, more = token_batch(2, length=24, seed=1), token_batch(2, length=10, seed=5)
    second, third = token_batch(2, length=6, seed=2), token_batch(2, length=6, seed=3)
    config = KnnConfig(**SHARED)
    served = memlm.attach(backbone(), config)
    served._begin_call()
    served.write(first)
    for probe in (second, third, second):
        expected = logits(fresh(config, first), probe, write_memory=False)
        torch.testing.assert_close(logits(served, probe, write_memory=False), expected, atol=1e-5, rtol=1e-5)
    served.write(more)
    expected = logits(fresh(config, first, more), third, write_memory=False)
    torch.testing.assert_close(logits(served, third, write_memory=False), expected, atol=1e-5, rtol=1e-5)
    # and the two rows' memories really differ: a row reading the other's items would show
    swapped = logits(fresh(config, first.flip(0), more.flip(0)), third, write_memory=False)
    assert not torch.allclose(swapped, expected, atol=1e-4)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])  # rotary positions, and learned ones (no rotation)
def test_each_row_reads_its_own_memory_as_it_would_alone(architecture):
    """Rows of one batch with different memories: each row's logits are those of a batch of one holding
    only that row's items (searches, stream blocks and positions are kept per row)."""
    first, probe = token_batch(2, length=24, seed=1), token_batch(2, length=6, seed=2)
    config = KnnConfig(**SHARED)
    together = logits(fresh(config, first, architecture=architecture), probe, write_memory=False)
    assert not torch.allclose(together, logits(backbone(architecture), probe), atol=1e-4)
    for row in (0, 1):
        alone = logits(fresh(config, first[row:row + 1], architecture=architecture), probe[row:row + 1],
                       write_memory=False)
        torch.testing.assert_close(together[row:row + 1], alone, atol=1e-5, rtol=1e-5)


def test_a_row_without_memory_reads_nothing_and_the_next_row_still_reads():
    """Only batch row 1 stored anything: row 0's logits are the bare backbone's, row 1's those of its
    memory (a row without memory must not end the pass over the batch)."""
    probe = token_batch(2, length=6, seed=2)
    story = token_batch(1, length=16, seed=4)
    config = KnnConfig(**{**SHARED, "search_every": 1})
    memory_model = memlm.attach(backbone(), config)
    memory_model.memorize(torch.cat([torch.full((1, 16), 257), story]), torch.tensor([[0] * 16, [1] * 16]),
                          segment_length=8, progress=False)
    assert len(memory_model.memories["knn"].store.group("attention", 1, 0)) == 16
    read = logits(memory_model, probe, write_memory=False)
    torch.testing.assert_close(read[0], logits(backbone(), probe[:1])[0], atol=1e-5, rtol=1e-5)
    alone = memlm.attach(backbone(), config)
    alone.memorize(story, segment_length=8, progress=False)
    torch.testing.assert_close(read[1:], logits(alone, probe[1:], write_memory=False), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(read[1], logits(backbone(), probe[1:])[0], atol=1e-4)


def test_a_memory_that_is_not_reading_leaves_the_backbone_as_it_is_and_still_stores():
    """`reading = False` (a fast fill): the logits are the bare backbone's, and writes still store."""
    first, probe = token_batch(1, length=24, seed=1), token_batch(1, length=6, seed=2)
    memory_model = fresh(KnnConfig(**SHARED), first)
    knn = memory_model.memories["knn"]
    assert not torch.allclose(logits(memory_model, probe, write_memory=False), logits(backbone(), probe), atol=1e-4)
    knn.reading = False
    torch.testing.assert_close(logits(memory_model, probe, write_memory=False), logits(backbone(), probe))
    memory_model.write(probe)
    assert len(knn.store.group("attention", 0, 0)) == 24 + 6


def test_attention_without_position_ids_places_items_as_with_the_default_positions(monkeypatch):
    """Attention code that passes no `position_ids` (other architectures' attention functions) gets the
    positions a plain forward pass has: the window's last `length` positions, also on cached decode steps
    (one query, a longer cache)."""
    from memlm.memories.knn.memory import KnnMemory

    first, probe = token_batch(2, length=24, seed=1), token_batch(2, length=6, seed=2)
    config = KnnConfig(**SHARED)

    def read_and_decode():
        memory_model = fresh(config, first)
        read = logits(memory_model, probe, write_memory=False)
        # a prompt longer than the window: its start goes through memory in this call, so the decode steps
        # see those items at their true distance (the stream block) with a cache longer than the query
        decoded = memory_model.generate(torch.cat([first, probe], dim=1), context_window=8, max_new_tokens=3,
                                        do_sample=False, pad_token_id=257, output_scores=True,
                                        return_dict_in_generate=True)
        return read, torch.stack(decoded.scores)

    with_positions = read_and_decode()
    retrieve = KnnMemory._retrieve
    monkeypatch.setattr(KnnMemory, "_retrieve",
                        lambda self, layer, query, position_ids, key_length: retrieve(self, layer, query, None,
                                                                                      key_length))
    torch.testing.assert_close(read_and_decode(), with_positions, atol=1e-5, rtol=1e-5)
