"""Behaviour specific to the `recurrent` mechanism."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import hook_counts, logits, randomize_memory_weights, token_batch, train_key_recall
from tiny import tiny_model

import memlm
from memlm import RecurrentConfig


@pytest.mark.parametrize("decay", [0.0, -0.1, 1.01, 2, float("nan"), "0.9"])
def test_decay_outside_unit_interval_is_refused(decay):
    with pytest.raises(memlm.ConfigError, match="decay"):
        RecurrentConfig(decay=decay)


def test_config_validation_messages():
    with pytest.raises(memlm.ConfigError, match="memory_size"):
        RecurrentConfig(memory_size=0)
    with pytest.raises(memlm.ConfigError, match="at least one"):
        RecurrentConfig(inject_input=False, inject_middle=False, inject_top=False)
    with pytest.raises(memlm.ConfigError, match="mode"):
        RecurrentConfig(mode="sometimes")
    with pytest.raises(memlm.ConfigError, match="unknown option"):
        memlm.make_config({"mechanism": "recurrent", "decai": 0.9})
    assert RecurrentConfig(decay=1.0).decay == 1.0


def test_unknown_mechanism_is_a_typed_error():
    with pytest.raises(memlm.UnknownMechanismError, match="available: .*recurrent"):
        memlm.attach(tiny_model("llama"), "hippocampus")


def test_state_is_bounded_by_decay_and_history_recorded():
    memory_model = memlm.attach(tiny_model("llama"), RecurrentConfig(decay=0.5, memory_size=16))
    randomize_memory_weights(memory_model, scale=3.0)
    for seed in range(5):
        memory_model.write(token_batch(seed=seed))
        state = memory_model.memories["recurrent"].state
        # A GRU output lies in [-1, 1]; the decay then scales it.
        assert state.abs().max() <= 0.5 + 1e-6
    history = memory_model.memories["recurrent"].state_norm_history
    assert len(history) == 5 and all(0 < value <= 0.5 * math.sqrt(16) for value in history)


def test_decay_makes_old_traces_fade():
    """Two states that differ only in an old segment converge as later segments arrive."""
    def distance_after(decay: float, later_segments: int) -> float:
        torch.manual_seed(0)  # the same GRU initialisation for every decay
        memory_model = memlm.attach(tiny_model("llama"), RecurrentConfig(decay=decay, memory_size=16))
        memory_model.reset(batch_size=2)
        first = token_batch(seed=0)
        first[1] = token_batch(1, seed=99)[0]  # row 1 sees a different first segment
        memory_model.write(first)
        for seed in range(later_segments):
            shared = token_batch(1, seed=10 + seed).repeat(2, 1)  # both rows see the same later text
            memory_model.write(shared)
        state = memory_model.memories["recurrent"].state
        return float((state[0] - state[1]).norm().detach())

    assert distance_after(0.5, 6) < 0.5 * distance_after(0.5, 1)
    assert distance_after(0.5, 6) < distance_after(1.0, 6)


def test_persistent_and_ephemeral_modes():
    prompt = token_batch(1, seed=3, length=5)
    options = dict(max_new_tokens=3, do_sample=False, pad_token_id=257)
    persistent = memlm.attach(tiny_model("llama"), RecurrentConfig(mode="persistent"))
    persistent.generate(prompt, **options)
    persistent.generate(prompt, **options)
    assert persistent.memories["recurrent"].updates == 2

    ephemeral = memlm.attach(tiny_model("llama"), RecurrentConfig(mode="ephemeral"))
    ephemeral.generate(prompt, **options)
    ephemeral.generate(prompt, **options)
    assert ephemeral.memories["recurrent"].updates == 1  # reset at the start of each call
    assert ephemeral.memorize(token_batch(1, length=20), segment_length=8, progress=False) == 3
    assert ephemeral.memories["recurrent"].updates == 3


def test_read_points_can_be_switched_off():
    backbone = tiny_model("llama", num_layers=4)
    hooks_before = hook_counts(backbone)
    memory_model = memlm.attach(backbone, RecurrentConfig(inject_input=False, inject_middle=False))
    assert list(memory_model.memories["recurrent"].readouts) == ["top"]
    assert hook_counts(backbone) - hooks_before == 2  # the top read + the capture for writes
    memory_model.detach()

    probe = token_batch(seed=2)
    bare = logits(backbone, probe)
    only_input = memlm.attach(backbone, RecurrentConfig(inject_middle=False, inject_top=False))
    randomize_memory_weights(only_input)
    only_input.write(token_batch(seed=1))
    assert not torch.allclose(logits(only_input, probe, write_memory=False), bare)


def test_padded_rows_keep_their_state():
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    before = memory_model.memories["recurrent"].state.clone()
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1] = 0  # row 1 is all padding in this segment
    memory_model.write(token_batch(seed=2), attention_mask=mask)
    after = memory_model.memories["recurrent"].state
    assert torch.equal(after[1], before[1])
    assert not torch.equal(after[0], before[0])


def test_writes_happen_once_per_turn_not_per_decode_step():
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    memory_model.generate(token_batch(2, seed=1, length=5), max_new_tokens=6, do_sample=False, pad_token_id=257)
    assert memory_model.memories["recurrent"].updates == 1
    memory_model.generate(token_batch(2, seed=1, length=5), max_new_tokens=4, num_beams=3,
                          num_return_sequences=2, pad_token_id=257)
    assert memory_model.memories["recurrent"].updates == 2
    assert memory_model.memories["recurrent"].state.shape[0] == 2  # one state per input row


def test_batch_size_mismatch_is_a_clear_error():
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    memory_model.write(token_batch(2))
    with pytest.raises(memlm.MemoryStateError, match="reset"):
        memory_model.write(token_batch(3))
    memory_model.reset(batch_size=3)
    memory_model.write(token_batch(3))


def test_state_for_another_memory_size_is_refused(tmp_path):
    backbone = tiny_model("llama")
    small = memlm.attach(backbone, RecurrentConfig(memory_size=8))
    small.write(token_batch())
    small.save_state(tmp_path)
    small.detach()
    large = memlm.attach(backbone, RecurrentConfig(memory_size=16))
    large.write(token_batch())
    before = large.memories["recurrent"].state.clone()
    with pytest.raises(memlm.IncompatibleMemoryError, match="memory_size"):
        large.load_state(tmp_path)
    assert torch.equal(large.memories["recurrent"].state, before)


def test_recurrent_memory_is_trainable_and_carries_information_across_segments():
    # Without memory nothing in segment 2 tells the key: the best possible loss is ln(10).
    assert train_key_recall([]) > 0.9 * math.log(10)
    assert train_key_recall(RecurrentConfig(memory_size=64, decay=1.0)) < 0.25 * math.log(10)
