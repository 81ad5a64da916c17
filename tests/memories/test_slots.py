"""Behaviour specific to the `slots` memory (LM2): identity slots, the gated write, persistence, learning."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import logits, randomize_memory_weights, token_batch, train_key_recall
from tiny import tiny_model

import memlm
from memlm.memories.slots import SlotsConfig, identity_slots


@pytest.mark.parametrize("options", [
    {"memory_slots": 0}, {"num_mem_heads": 0}, {"mem_dim": 30, "num_mem_heads": 4}, {"layers": []},
    {"layers": "some"}, {"layers": [0.5]}, {"forget_bias": float("nan")}, {"memory_slots": True},
])
def test_invalid_configs_are_refused(options):
    with pytest.raises(memlm.ConfigError, match="slots"):
        SlotsConfig(**options)


def test_slots_start_as_the_identity_padded_with_zeros():
    assert torch.equal(identity_slots(3, 5), torch.tensor([[1., 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]))
    assert torch.equal(identity_slots(4, 2), torch.tensor([[1., 0], [0, 1], [0, 0], [0, 0]]))
    memory_model = memlm.attach(tiny_model("llama"), SlotsConfig(memory_slots=8, layers="all"))
    memory = memory_model.memories["slots"]
    memory.reset(batch_size=3)
    assert memory.memory.shape == (3, 2, 8, 32)  # (B, layers, slots, width)
    assert torch.equal(memory.memory[2, 1], identity_slots(8, 32))


def test_a_write_follows_the_lm2_update_rule():
    memory_model = memlm.attach(tiny_model("llama"), SlotsConfig(layers=[1], memory_slots=4))
    randomize_memory_weights(memory_model, scale=0.3)
    memory = memory_model.memories["slots"]
    layer = memory.layer_memories["1"]
    segment = token_batch(2, length=6, seed=1)
    seen = {}
    handle = memory_model.layout.layers[1].self_attn.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.setdefault("hidden", kwargs["hidden_states"]), with_kwargs=True)
    memory_model.write(segment)
    handle.remove()
    before = identity_slots(4, 32).expand(2, -1, -1)
    # E: the slots attend over the segment; then M' = input_gate * tanh(E) + forget_gate * M
    query = layer._split(layer.write_query(before))
    key, value = layer.token_key_value(seen["hidden"]).chunk(2, dim=-1)
    weights = torch.softmax(query @ layer._split(key).transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1)
    candidates = layer.write_out((weights @ layer._split(value)).transpose(1, 2).reshape(2, 4, -1))
    input_gate, forget_gate = torch.sigmoid(layer.gates(candidates)).unbind(-1)
    expected = input_gate[..., None] * torch.tanh(candidates) + forget_gate[..., None] * before
    torch.testing.assert_close(memory.memory[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_slots_are_written_once_per_segment_and_kept_across_calls_unless_reset_per_sequence():
    memory_model = memlm.attach(tiny_model("llama"), "slots")
    randomize_memory_weights(memory_model)
    memory = memory_model.memories["slots"]
    memory_model.generate(token_batch(1, length=5), max_new_tokens=6, do_sample=False, pad_token_id=257)
    assert memory.updates == 1  # the turn is written once, not per decoded token
    after_first = memory.memory.clone()
    memory_model.generate(token_batch(1, length=5, seed=3), max_new_tokens=2, pad_token_id=257)
    assert memory.updates == 2 and not torch.equal(memory.memory, after_first)  # persistent: builds on it
    resetting = memlm.attach(memory_model.detach(), SlotsConfig(reset_per_sequence=True))
    resetting.generate(token_batch(1, length=5), max_new_tokens=2, pad_token_id=257)
    resetting.generate(token_batch(1, length=5), max_new_tokens=2, pad_token_id=257)
    assert resetting.memories["slots"].updates == 1  # each call starts from the identity slots


def test_padding_does_not_reach_the_slots():
    memory_model = memlm.attach(tiny_model("llama"), "slots")
    randomize_memory_weights(memory_model)
    segment = token_batch(2, length=6, seed=2)
    memory_model.write(segment[:, :4])
    unpadded = memory_model.memories["slots"].memory.clone()
    memory_model.reset()
    padded = segment.clone()
    padded[:, 4:] = 257
    memory_model.write(padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]] * 2))
    torch.testing.assert_close(memory_model.memories["slots"].memory, unpadded, atol=1e-5, rtol=1e-5)


def test_summary_shows_how_far_slots_moved():
    memory_model = memlm.attach(tiny_model("llama"), "slots")
    assert memory_model.memories["slots"].summary()["slot_change"] == 0.0
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    summary = memory_model.memories["slots"].summary()
    assert summary["updates"] == 1 and summary["slot_change"] > 0 and summary["layers"] == [0, 1]
    assert logits(memory_model, token_batch(seed=2), write_memory=False).shape == (2, 12, 300)


def test_slots_are_trainable_and_carry_information_across_segments():
    assert train_key_recall(SlotsConfig(layers="all", memory_slots=8, mem_dim=64), steps=150) < 0.25 * math.log(10)
