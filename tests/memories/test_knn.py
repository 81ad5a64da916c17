"""Behaviour specific to the `knn` mechanism: exact relative placement, kNN-LM, provenance."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import logits, randomize_memory_weights, token_batch
from tiny import tiny_model

import memlm
from memlm import KnnConfig
from memlm.eval.perplexity import segment_perplexity


@pytest.mark.parametrize("options", [
    {"attention": "sometimes"}, {"attention": "off"}, {"top_k": 0}, {"lm_lambda": 1.5}, {"lm_temperature": 0},
    {"backend": "annoy"}, {"eviction": "random"}, {"capacity": 0}, {"chunk_size": 0}, {"layers": []},
    {"positions": "absolute"}, {"max_distance": 0}, {"recent": -1}, {"backend_options": {"dtype": "int8"}},
    {"store": "/a/directory"}, {"store": "redis://host/0"}, {"store_name": "../up"}, {"search_every": 0},
    {"search_every": 1.5}, {"backend_options": {"kernel": "cuda"}},
])
def test_invalid_configs_are_refused(options):
    with pytest.raises(memlm.ConfigError):
        KnnConfig(**options)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("top_k, recent", [(64, 0), (2, 64), (8, 4)])
def test_joint_attention_over_all_of_memory_equals_full_context(architecture, top_k, recent):
    """With every layer reading memory, every stored item attended exactly once (by top-k
    retrieval, or as one of the `recent` items, or split between both) and keys placed at their
    true distance, attending to memory is exactly attending to the earlier segment in context."""
    backbone = tiny_model(architecture)
    first, second = token_batch(1, length=10, seed=1), token_batch(1, length=6, seed=2)
    full = logits(backbone, torch.cat([first, second], dim=1))[:, 10:]
    memory_model = memlm.attach(backbone, KnnConfig(attention="joint", layers="all", top_k=top_k, recent=recent))
    memory_model._begin_call()
    memory_model.write(first)
    with_memory = logits(memory_model, second, write_memory=False)
    torch.testing.assert_close(with_memory, full, atol=1e-4, rtol=1e-4)
    memory_model.reset()  # and without memory the second segment sees nothing of the first
    assert not torch.allclose(logits(memory_model, second, write_memory=False), full, atol=1e-3)


@pytest.mark.parametrize("positions, max_distance, offset, top_k", [
    ("relative", 12, 0, 10), ("relative", 4, 0, 10), ("relative", 12, 100, 10), ("fixed", 12, 0, 10),
    ("fixed", 12, 0, 3), ("fixed", 4, 100, 1)])
def test_logits_match_rotating_each_key_to_its_clamped_distance(positions, max_distance, offset, top_k):
    """Reference: every stored key rotated to window position p - clamp(d, 1, max_distance) and
    dotted with the query at p (d: its distance in the stream; `fixed`: memory_distance). Covers
    items within max_distance (the stream block), beyond it (clamped) and both at once. With
    `top_k` below the 10 stored items (`fixed`: candidates are searched where they are scored),
    each query gets exactly its `top_k` best keys: a search that ranked them wrongly (e.g. with
    the negated query, which finds the worst) fails here."""
    from memlm.memories.knn import _rotate

    backbone = tiny_model("llama")
    first, second = token_batch(1, length=10, seed=1), token_batch(1, length=6, seed=2)
    memory_model = memlm.attach(backbone, KnnConfig(attention="joint", layers="all", top_k=top_k, recent=0,
                                                    max_distance=max_distance, positions=positions,
                                                    memory_distance=7, backend_options={"dtype": "float32"}))
    memory = memory_model.memories["knn"]
    memory_model._begin_call()
    memory_model.write(first)
    memory._positions[0] += offset  # the window starts `offset` tokens after the stored segment
    captured = []
    retrieve = memory._retrieve

    def spy(layer, query, position_ids, key_length):
        result = retrieve(layer, query, position_ids, key_length)
        captured.append((layer, query, result))
        return result

    memory._retrieve = spy
    logits(memory_model, second, write_memory=False)
    layer, query, result = captured[1]
    group = memory.store.group("attention", 0, layer)
    heads, length, dim = query.shape[1], query.shape[2], query.shape[3]
    keys = group.values[..., :dim].repeat_interleave(heads // group.values.shape[0], dim=0)  # (H, N, D)
    window = torch.arange(length).view(-1, 1)  # (T, 1)
    distance = (10 + offset + window - group.origins[:, 1].view(1, -1)).clamp(1, max_distance)  # (T, N)
    if positions == "fixed":
        distance = torch.full_like(distance, 7)
    cos, sin = memory._rotary_at(layer, window - distance, query)  # (T, N, R)
    placed = _rotate(keys.unsqueeze(1).expand(-1, length, -1, -1), cos, sin)  # (H, T, N, D)
    expected = torch.einsum("htd,htnd->htn", query[0], placed)
    assert result.scores.shape[-1] == top_k
    torch.testing.assert_close(result.scores[0].sort(-1, descending=True).values, expected.topk(top_k).values,
                               atol=1e-4, rtol=1e-4)


def test_fixed_placement_differs_from_relative():
    backbone = tiny_model("llama")
    first, second = token_batch(1, length=10, seed=1), token_batch(1, length=6, seed=2)
    results = []
    for positions in ("relative", "fixed"):
        memory_model = memlm.attach(backbone, KnnConfig(attention="joint", layers="all", positions=positions))
        memory_model.write(first)
        results.append(logits(memory_model, second, write_memory=False))
        memory_model.detach()
    assert not torch.allclose(*results, atol=1e-4)


def test_knn_lm_lowers_perplexity_of_text_seen_before_without_training():
    torch.manual_seed(0)
    backbone = tiny_model("llama")
    text = token_batch(1, length=64, seed=5)[0]
    repeated = torch.cat([text, text])  # the second half is in memory once the first is written
    baseline = segment_perplexity(memlm.MemoryModel(backbone), repeated, window=16, progress=False)
    memory_model = memlm.attach(backbone, KnnConfig(attention="off", knn_lm=True, lm_lambda=0.5,
                                                    lm_temperature=1.0))
    with_memory = segment_perplexity(memory_model, repeated, window=16, progress=False)
    assert with_memory.tokens == baseline.tokens == 127
    assert with_memory.perplexity < 0.5 * baseline.perplexity


def test_knn_lm_logits_are_a_proper_mixture():
    backbone = tiny_model("llama")
    probe = token_batch(1, seed=3)
    bare = logits(backbone, probe)
    memory_model = memlm.attach(backbone, KnnConfig(attention="off", knn_lm=True, lm_lambda=0.3))
    memory_model.write(token_batch(1, seed=4))
    mixed = logits(memory_model, probe, write_memory=False)
    assert not torch.allclose(mixed, bare)
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(1, probe.shape[1]), atol=1e-4, rtol=0)
    # The LM part keeps at least (1 - λ) of its probability on every token.
    assert (mixed.exp() >= 0.7 * bare.softmax(-1) - 1e-6).all()


@pytest.mark.parametrize("temperature", [0.25, 4.0])
def test_knn_lm_weights_neighbours_by_a_softmax_of_scores_divided_by_the_temperature(temperature):
    """Reference mixture from the neighbours the search returned: lambda * softmax(-d^2 / T) put on
    their next tokens + (1 - lambda) * the backbone's softmax (T != 1, so multiplying by T fails)."""
    backbone = tiny_model("llama")
    probe = token_batch(1, seed=3)
    bare = logits(backbone, probe)[0]
    memory_model = memlm.attach(backbone, KnnConfig(attention="off", knn_lm=True, lm_lambda=0.3, lm_top_k=6,
                                                    lm_temperature=temperature))
    memory_model.write(token_batch(1, length=40, seed=4))
    group = memory_model.memories["knn"].store.group("lm", 0, -1)
    found = []
    search = group.search_positions
    group.search_positions = lambda *args: found.append(search(*args)) or found[-1]
    mixed = logits(memory_model, probe, write_memory=False)[0]
    assert len(found) == 1
    scores, tokens = found[0].scores[0], group.gather_values(found[0].positions)[0]  # (T, 6) each
    assert (scores <= 0).all() and (scores.std(-1) > 0).all()  # negative squared distances, not all tied
    neighbours = torch.zeros_like(bare).scatter_add_(1, tokens, torch.softmax(scores / temperature, dim=-1))
    expected = (0.3 * neighbours + 0.7 * bare.softmax(-1)).log()
    torch.testing.assert_close(mixed, expected, atol=1e-4, rtol=1e-4)


def test_knn_lm_mixes_only_the_rows_that_hold_memory():
    """Nothing stored: the logits are the backbone's. Only batch row 1 stored: row 1 is mixed, and row 0
    (no neighbours) keeps the backbone's distribution over the vocabulary."""
    backbone = tiny_model("llama")
    probe = token_batch(2, seed=3)
    bare = logits(backbone, probe)
    memory_model = memlm.attach(backbone, KnnConfig(attention="off", knn_lm=True, lm_lambda=0.5))
    torch.testing.assert_close(logits(memory_model, probe, write_memory=False), bare)
    memory_model.memorize(torch.cat([torch.full((1, 16), 257), token_batch(1, length=16, seed=4)]),
                          torch.tensor([[0] * 16, [1] * 16]), segment_length=8, progress=False)
    mixed = logits(memory_model, probe, write_memory=False)
    torch.testing.assert_close(mixed[0], bare[0].log_softmax(-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[1], bare[1].log_softmax(-1), atol=1e-3)
    torch.testing.assert_close(mixed[1].exp().sum(-1), torch.ones(probe.shape[1]), atol=1e-4, rtol=0)


def test_writes_record_provenance_and_can_be_deleted(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), KnnConfig(layers=[0, 1], chunk_size=4), tokenizer=tokenizer)
    memory_model.set_provenance(user="ada", session="s1")
    memory_model.memorize("the cat sat on the mat", segment_length=8, progress=False)
    memory_model.set_provenance(user="ada", session="s2")
    memory_model.memorize("dogs bark", segment_length=8, progress=False)
    store = memory_model.memories["knn"].store
    records = store.records.select()
    assert [r.text for r in records if r.session == "s1"] == ["the ", "cat ", "sat ", "on t", "he m", "at"]
    # Positions count from the start of the memorized stream, across its 8-token segments.
    assert [r.position for r in records if r.session == "s1"] == [0, 4, 8, 12, 16, 20]
    assert len({r.sequence for r in records if r.session == "s1"}) == 1
    assert all(r.layer == -1 and r.user == "ada" for r in records)  # one record for both layers
    assert memory_model.memories["knn"].delete(session="s1") == 6
    assert {r.session for r in store.records.select()} == {"s2"}
    assert len(store.group("attention", 0, 0)) == len(store.group("attention", 0, 1)) == 3


def test_writes_leave_text_decoding_and_sqlite_to_the_first_read(tokenizer, monkeypatch):
    memory_model = memlm.attach(tiny_model("llama"), KnnConfig(layers=[0, 1], knn_lm=True), tokenizer=tokenizer)
    decoded = []
    batch_decode = tokenizer.batch_decode
    monkeypatch.setattr(tokenizer, "batch_decode", lambda spans, **kw: decoded.append(1) or batch_decode(spans, **kw))
    memory_model.memorize("the cat sat on the mat", segment_length=8, progress=False)
    store = memory_model.memories["knn"].store
    assert not decoded and store._records.count() == 0  # writing decoded no text and touched no row
    records = store.records.select()  # the first read writes them all
    assert decoded and len(records) == store._records.count() == 22 + 19
    assert [r.text for r in records if r.kind == "attention"][:4] == ["t", "h", "e", " "]
    assert [r.token for r in records if r.kind == "lm"][:3] == [records[1].token, records[2].token, records[3].token]


def test_gated_memory_is_trainable():
    memory_model = memlm.attach(tiny_model("llama"), KnnConfig())
    memory_model.write(token_batch(seed=1))
    loss = memory_model(token_batch(seed=2), write_memory=False).logits.logsumexp(-1).mean()
    loss.backward()
    assert memory_model.memories["knn"].gate.grad.abs().sum() > 0


def test_ephemeral_knn_forgets_between_calls():
    memory_model = memlm.attach(tiny_model("llama"), KnnConfig(mode="ephemeral"))
    memory_model.memorize(token_batch(1, length=20), segment_length=8, progress=False)
    assert memory_model.memories["knn"].summary()["items"] == 20
    memory_model.generate(token_batch(1, length=4), max_new_tokens=2, pad_token_id=257)
    assert memory_model.memories["knn"].summary()["items"] == 6  # only this call's turn


def test_capacity_applies_per_row_and_layer():
    memory_model = memlm.attach(tiny_model("llama"), KnnConfig(capacity=10, eviction="oldest", layers=[0, 1]))
    memory_model.memorize(token_batch(2, length=40), segment_length=8, progress=False)
    store = memory_model.memories["knn"].store
    for row in (0, 1):
        for layer in (0, 1):
            assert len(store.group("attention", row, layer)) == 10
    records = store.records.select()
    assert len(records) == 2 * 10  # one record per item, shared by the layers it is stored in
    for row in (0, 1):
        assert sorted(r.position for r in records if r.row == row) == list(range(30, 40))
    # a row that writes more does not evict another row's items
    memory_model.memorize(torch.cat([token_batch(1, length=16, seed=3), torch.full((1, 16), 257)]),
                          torch.tensor([[1] * 16, [0] * 16]), segment_length=8, progress=False)
    assert sorted(r.position for r in store.records.select() if r.row == 1) == list(range(30, 40))
    assert len(store.group("attention", 1, 0)) == len(store.group("attention", 1, 1)) == 10


def test_memory_makes_segment_perplexity_differ_only_through_retrieval():
    backbone = tiny_model("llama")
    text = token_batch(1, length=48, seed=8)[0]

    def perplexity(memories, tokens, randomize=False):
        model = memlm.attach(backbone, memories)
        if randomize:
            randomize_memory_weights(model)
        try:
            return segment_perplexity(model, tokens, window=16, progress=False).perplexity
        finally:
            model.detach()

    baseline = perplexity([], text)
    assert math.isclose(perplexity("knn", text), baseline, rel_tol=1e-5)  # untrained: zero gate
    # One segment: nothing stored before it, so nothing retrieved: the open gate has nothing to mix in.
    assert math.isclose(perplexity("knn", text[:16], randomize=True), perplexity([], text[:16]), rel_tol=1e-5)
    # Three segments: the later ones retrieve what the earlier ones stored, and the output moves.
    assert not math.isclose(perplexity("knn", text, randomize=True), baseline, rel_tol=1e-3)


def test_cluster_search_reading_every_page_gives_the_exact_search_logits():
    """The opt-in cluster search in the model: probing every page reproduces exact search's logits
    (positions, gathers and relative placement all agree); probing one page changes them."""
    # distinct tokens: the first layer's keys depend on the token only, and equal keys tie
    tokens = torch.randperm(250, generator=torch.Generator().manual_seed(1))[:144].view(1, -1) + 5
    first, second = tokens[:, :120], tokens[:, 120:]

    def read_with(**search):
        options = {"dtype": "float32", **search}
        memory_model = memlm.attach(tiny_model("llama"), KnnConfig(attention="joint", layers="all", top_k=4, recent=0,
                                                        backend_options=options))
        memory_model._begin_call()
        memory_model.write(first)
        return logits(memory_model, second, write_memory=False)

    exact = read_with(search="exact")
    clusters = {"search": "clusters", "page_size": 8, "exact_below": 16, "min_queries": 1}
    torch.testing.assert_close(read_with(**clusters, probe_pages=64), exact)
    assert not torch.allclose(read_with(**clusters, probe_pages=1), exact, atol=1e-4)


def test_layers_sharing_a_search_search_once_and_read_the_same_items(monkeypatch):
    """`search_every=2` over 4 layers: 2 searches a forward pass (the leaders'), and with every stored
    item retrieved, sharing changes nothing (each layer still scores its own keys exactly)."""
    from memlm.store.group import MemoryGroup

    backbone = tiny_model("llama", num_layers=4)
    first, second = token_batch(1, length=10, seed=1), token_batch(1, length=6, seed=2)
    outputs, searches = {}, []
    search_positions = MemoryGroup.search_positions
    monkeypatch.setattr(MemoryGroup, "search_positions",
                        lambda group, *args, **kwargs: searches.append(1) or search_positions(group, *args, **kwargs))
    for every in (1, 2):
        memory_model = memlm.attach(backbone, KnnConfig(attention="joint", layers="all", top_k=16, recent=0,
                                                        search_every=every))
        memory_model._begin_call()
        memory_model.write(first)
        searches.clear()
        outputs[every] = logits(memory_model, second, write_memory=False)
        assert len(searches) == 4 // every
        memory_model.detach()
    torch.testing.assert_close(outputs[2], outputs[1], atol=1e-5, rtol=1e-5)


def test_a_follower_reads_the_leaders_items_not_its_own_best():
    """With fewer items retrieved than stored, a follower's items are the ones its leader's queries
    picked: its attention differs from searching with its own queries (which equals full search)."""
    backbone = tiny_model("llama", num_layers=4)
    first, second = token_batch(1, length=24, seed=1), token_batch(1, length=6, seed=2)
    outputs = {}
    for every in (1, 4):
        memory_model = memlm.attach(backbone, KnnConfig(attention="joint", layers="all", top_k=3, recent=0,
                                                        search_every=every))
        randomize_memory_weights(memory_model)
        memory_model._begin_call()
        memory_model.write(first)
        outputs[every] = logits(memory_model, second, write_memory=False)
        memory_model.detach()
    assert not torch.allclose(outputs[4], outputs[1], atol=1e-4)


def test_knn_fast_searches_once_per_three_layers(monkeypatch):
    from memlm.registry import make_config
    from memlm.store.group import MemoryGroup

    searches = []
    search_positions = MemoryGroup.search_positions
    monkeypatch.setattr(MemoryGroup, "search_positions",
                        lambda group, *args, **kwargs: searches.append(1) or search_positions(group, *args, **kwargs))
    memory_model = memlm.attach(tiny_model("llama", num_layers=6), make_config("knn-fast"))
    memory_model._begin_call()
    memory_model.write(token_batch(1, length=10, seed=1))
    searches.clear()
    logits(memory_model, token_batch(1, length=4, seed=2), write_memory=False)
    assert len(searches) == 2
    assert not memory_model.memories["knn"].store.group("attention", 0, 0)._fused  # "auto" on a CPU: the product
