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


def _final_normed(backbone, input_ids, attention_mask):
    """The final norm's output (what the LM head reads), recorded by a hook of this test's own."""
    seen = []
    handle = backbone.model.norm.register_forward_hook(lambda _m, _a, output: seen.append(output.detach()))
    try:
        with torch.no_grad():
            backbone(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    return seen[-1]


def test_a_write_is_decay_times_the_gru_of_the_mean_final_normed_hidden_state_of_real_tokens():
    backbone = tiny_model("llama")
    memory_model = memlm.attach(backbone, RecurrentConfig(decay=0.8, memory_size=8))
    randomize_memory_weights(memory_model)
    memory = memory_model.memories["recurrent"]
    expected = torch.zeros(2, 8)
    for seed in (4, 5):
        ids = token_batch(seed=seed)
        mask = torch.ones_like(ids)
        mask[0, 7:] = 0  # row 0 has 7 real tokens, then padding
        hidden = _final_normed(backbone, ids, mask)  # while the state is unchanged: reads as before the write
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, C)
        with torch.no_grad():
            expected = 0.8 * memory.gru(pooled, expected)
        memory_model.write(ids, attention_mask=mask)
        assert torch.allclose(memory.state, expected, atol=1e-5)
    assert memory.updates == 2
    activity = memory.activity()  # row 0's units after the latest update
    assert torch.equal(activity["state"], memory.state[0].detach()) and activity["norm"] == pytest.approx(
        float(memory.state[0].norm()))
    summary = memory.summary()
    assert summary == {"updates": 2, "rows": 2, "state_norm": pytest.approx(float(memory.state.norm(dim=-1).mean())),
                       "decay": 0.8, "mode": "persistent", "read_points": ["input", "middle", "top"]}
    assert memory.state.requires_grad  # the GRU's output: gradients flow through segments (BPTT) ...
    memory.detach_state()
    assert not memory.state.requires_grad and torch.allclose(memory.state, expected, atol=1e-5)  # ... until cut


def test_the_readout_adds_gate_times_projected_state_in_the_hidden_states_dtype():
    from memlm.memories.recurrent import GatedReadout

    readout = GatedReadout(memory_size=3, hidden_size=2)
    assert readout.proj.bias is None  # a zero state must read as exactly zero
    with torch.no_grad():
        readout.proj.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5]]))
        readout.gate.copy_(torch.tensor([0.5, 2.0]))
    hidden = torch.tensor([[[1.0, 1.0], [0.0, -2.0]]])  # (B=1, T=2, C=2)
    state = torch.tensor([[2.0, 1.0, -1.0]])  # proj: (0, -1.5); gate * proj: (0, -3)
    assert torch.equal(readout(hidden, state), torch.tensor([[[1.0, -2.0], [0.0, -5.0]]]))
    assert readout(hidden.to(torch.bfloat16), state).dtype == torch.bfloat16


@pytest.mark.parametrize(("point", "middle_layer", "layer"),
                         [("input", None, 0), ("middle", None, 3), ("middle", 1, 1), ("top", None, 5)])
def test_each_read_point_hooks_its_own_layer_and_reads_the_state_there(point, middle_layer, layer):
    backbone = tiny_model("llama", num_layers=6)

    def per_layer():
        return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in backbone.model.layers]

    before = per_layer()
    probe, bare = token_batch(seed=2), logits(backbone, token_batch(seed=2))
    options = {f"inject_{name}": name == point for name in ("input", "middle", "top")}
    memory_model = memlm.attach(backbone, RecurrentConfig(memory_size=8, middle_layer=middle_layer, **options))
    # one hook on that layer only; the write's capture sits on the final norm, not on a layer
    assert [after - old for after, old in zip(per_layer(), before, strict=True)] == [int(i == layer) for i in range(6)]
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    assert not torch.allclose(logits(memory_model, probe, write_memory=False), bare)


def test_reset_to_a_batch_size_is_a_zero_state_that_reads_as_nothing():
    backbone = tiny_model("llama")
    probe, bare = token_batch(seed=2), logits(backbone, token_batch(seed=2))
    memory_model = memlm.attach(backbone, RecurrentConfig(memory_size=8))
    randomize_memory_weights(memory_model)  # gates open
    memory_model.write(token_batch(seed=1))
    memory_model.reset(batch_size=2)
    memory = memory_model.memories["recurrent"]
    assert torch.equal(memory.state, torch.zeros(2, 8)) and memory.updates == 0 and memory.state_norm_history == []
    assert torch.allclose(logits(memory_model, probe, write_memory=False), bare)
    memory_model.reset()
    assert memory.state is None and memory.summary()["rows"] == 0 and memory.summary()["state_norm"] == 0.0
    assert torch.equal(memory.activity()["state"], torch.zeros(8)) and memory.activity()["norm"] == 0.0


def test_the_norm_history_keeps_the_latest_history_size_updates():
    memory_model = memlm.attach(tiny_model("llama"), RecurrentConfig(memory_size=8, history_size=3))
    randomize_memory_weights(memory_model)
    norms = []
    for seed in range(5):
        memory_model.write(token_batch(seed=seed))
        norms.append(float(memory_model.memories["recurrent"].state.norm(dim=-1).mean()))
    assert memory_model.memories["recurrent"].state_norm_history == pytest.approx(norms[-3:])
    assert memory_model.memories["recurrent"].summary()["state_norm"] == pytest.approx(norms[-1])  # the latest


def test_state_round_trips_through_save_and_load_and_goes_on_identically(tmp_path):
    def attached():
        memory_model = memlm.attach(tiny_model("llama"), RecurrentConfig(memory_size=8, history_size=3))
        randomize_memory_weights(memory_model)  # the same weights in both
        return memory_model

    original = attached()
    empty = tmp_path / "empty"
    original.save_state(empty)  # nothing written yet
    for seed in range(4):
        original.write(token_batch(seed=seed))
    original.save_state(tmp_path / "written")
    restored = attached()
    restored.load_state(tmp_path / "written")
    memory, copy = original.memories["recurrent"], restored.memories["recurrent"]
    assert torch.equal(copy.state, memory.state) and copy.updates == 4
    assert copy.state_norm_history == pytest.approx(memory.state_norm_history) and len(copy.state_norm_history) == 3
    original.write(token_batch(seed=9))
    restored.write(token_batch(seed=9))
    assert torch.allclose(copy.state, memory.state, atol=1e-6)  # float noise of another memory layout only
    assert copy.state_norm_history == pytest.approx(memory.state_norm_history)
    assert len(copy.state_norm_history) == 3  # the loaded history keeps its bound
    restored.load_state(empty)
    assert copy.state is None and copy.updates == 0 and copy.summary()["rows"] == 0


def test_a_saved_state_of_another_rank_is_refused():
    memory = memlm.attach(tiny_model("llama"), RecurrentConfig(memory_size=8)).memories["recurrent"]
    good = memory.state_tensors()
    for state in (torch.zeros(2, 8, 1), torch.zeros(8)):
        with pytest.raises(memlm.IncompatibleMemoryError, match="memory_size"):
            memory.check_state_tensors({**good, "state": state})


def test_attaching_it_untrained_says_that_it_needs_training(monkeypatch):
    import memlm.model

    monkeypatch.setattr(memlm.model, "_warned", set())
    with pytest.warns(UserWarning, match="'recurrent' memory starts untrained"):
        memlm.attach(tiny_model("llama"), "recurrent")


def test_config_messages_name_the_mechanism_and_option_and_the_bounds_are_inclusive():
    def message(**options):
        with pytest.raises(memlm.ConfigError) as refused:
            RecurrentConfig(**options)
        return str(refused.value)

    assert message(decay=0.0) == "recurrent: decay must be in (0.0, 1.0], got 0.0"
    assert message(inject_input=False, inject_middle=False, inject_top=False) == \
        "recurrent: enable at least one of inject_input/inject_middle/inject_top"
    assert message(history_size=0) == "recurrent: history_size must be a positive integer, got 0"
    assert message(history_size=2.0).endswith("got 2.0")  # an integer, not any number
    assert message(memory_size=0) == "recurrent: memory_size must be a positive integer, got 0"
    assert RecurrentConfig(memory_size=1, history_size=1).history_size == 1  # the smallest allowed


def test_a_bfloat16_backbone_keeps_a_bfloat16_state(tmp_path):
    saved = memlm.attach(tiny_model("llama"), RecurrentConfig(memory_size=8))
    saved.write(token_batch(seed=1))
    saved.save_state(tmp_path)  # a float32 state
    backbone = tiny_model("llama").to(torch.bfloat16)
    memory_model = memlm.attach(backbone, RecurrentConfig(memory_size=8))
    memory_model.write(token_batch(seed=1))
    memory_model.reset(batch_size=2)
    assert memory_model.memories["recurrent"].state.dtype == torch.bfloat16
    memory_model.write(token_batch(seed=2))
    assert memory_model.memories["recurrent"].state.dtype == torch.bfloat16
    memory_model.load_state(tmp_path)  # is read in the model's dtype
    assert memory_model.memories["recurrent"].state.dtype == torch.bfloat16
