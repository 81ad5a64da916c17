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


@pytest.mark.parametrize(("num_layers", "layers", "chosen"), [
    (6, None, [0, 2, 3, 5]),  # by default four layers spread over the depth: (2i + 1) * L // 8
    (2, None, [0, 1]), (3, "all", [0, 1, 2]), (6, [-1, 1, 1], [1, 5]),
])
def test_the_chosen_layers_each_get_their_own_slots_and_hook(num_layers, layers, chosen):
    backbone = tiny_model("llama", num_layers=num_layers)
    memory_model = memlm.attach(backbone, SlotsConfig(layers=layers, memory_slots=4))
    memory = memory_model.memories["slots"]
    assert memory.layers == chosen and list(memory.layer_memories) == [str(layer) for layer in chosen]
    hooked = [i for i, layer in enumerate(backbone.model.layers) if layer.self_attn._forward_hooks]
    assert hooked == chosen


def test_the_read_is_gated_cross_attention_from_the_hidden_states_to_the_slots():
    from memlm.memories.slots import LayerMemory

    torch.manual_seed(0)
    layer = LayerMemory(8, SlotsConfig(memory_slots=3, num_mem_heads=2, mem_dim=4))
    with torch.no_grad():
        layer.output_gate.copy_(torch.linspace(-1, 1, 8))
    hidden, slots = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    query = layer.read_query(hidden).view(2, 5, 2, 2).transpose(1, 2)  # (B, H, T, d)
    key, value = (part.view(2, 3, 2, 2).transpose(1, 2) for part in layer.slot_key_value(slots).chunk(2, dim=-1))
    weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(2), dim=-1)  # (B, H, T, N)
    expected = layer.output_gate * layer.read_out((weights @ value).transpose(1, 2).reshape(2, 5, 4))
    torch.testing.assert_close(layer.read(hidden, slots), expected)
    assert torch.equal(layer.gates.bias.detach(), torch.tensor([0.0, SlotsConfig().forget_bias]))


def test_opened_gates_change_the_output_and_a_row_of_padding_keeps_its_slots():
    backbone = tiny_model("llama")
    probe, bare = token_batch(seed=2), logits(backbone, token_batch(seed=2))
    memory_model = memlm.attach(backbone, SlotsConfig(layers=[0, 1], memory_slots=4))
    assert torch.allclose(logits(memory_model, probe, write_memory=False), bare)  # untrained: the backbone
    randomize_memory_weights(memory_model)
    assert not torch.allclose(logits(memory_model, probe, write_memory=False), bare)
    memory = memory_model.memories["slots"]
    memory_model.write(token_batch(seed=1))
    before = memory.memory.clone()
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1] = 0
    memory_model.write(token_batch(seed=3), attention_mask=mask)
    assert torch.equal(memory.memory[1], before[1]) and not torch.equal(memory.memory[0], before[0])


def test_slot_state_round_trips_and_activity_measures_the_distance_from_the_identity(tmp_path):
    def attached():
        memory_model = memlm.attach(tiny_model("llama"), SlotsConfig(layers=[0, 1], memory_slots=4))
        randomize_memory_weights(memory_model)
        return memory_model

    original = attached()
    memory = original.memories["slots"]
    assert torch.equal(memory.slot_activity(), torch.zeros(2, 4))
    original.save_state(tmp_path / "empty")
    original.write(token_batch(3, seed=1))  # 3 rows, 2 layers
    original.write(token_batch(3, seed=2))
    moved = (memory.memory.detach() - identity_slots(4, 32)).norm(dim=-1).mean(dim=0)  # (L, N)
    torch.testing.assert_close(memory.slot_activity(), moved)
    assert memory.activity()["layers"] == [0, 1] and torch.equal(memory.activity()["slot_change"], moved)
    assert memory.summary() == {"updates": 2, "rows": 3, "layers": [0, 1], "memory_slots": 4,
                                "slot_change": round(float(moved.mean()), 4), "mode": "persistent"}
    original.save_state(tmp_path / "written")
    restored = attached()
    restored.load_state(tmp_path / "written")
    copy = restored.memories["slots"]
    assert torch.equal(copy.memory, memory.memory) and copy.updates == 2
    restored.load_state(tmp_path / "empty")
    assert copy.memory is None and copy.updates == 0 and copy.summary()["rows"] == 0
    assert memory.memory.requires_grad
    memory.detach_state()
    assert not memory.memory.requires_grad


def test_a_saved_slot_state_of_another_shape_is_refused():
    memory = memlm.attach(tiny_model("llama"), SlotsConfig(layers=[0, 1], memory_slots=4)).memories["slots"]
    good = memory.state_tensors()
    assert good["memory"].shape == (0, 2, 4, 32)
    for shape in ((1, 2, 4, 16), (1, 1, 4, 32), (1, 2, 3, 32), (2, 4, 32), (1, 1, 2, 4, 32)):
        with pytest.raises(memlm.IncompatibleMemoryError, match="other layers, slot count or width"):
            memory.check_state_tensors({**good, "memory": torch.zeros(shape)})


def test_slot_config_messages_name_the_option():
    def message(**options):
        with pytest.raises(memlm.ConfigError) as refused:
            SlotsConfig(**options)
        return str(refused.value)

    assert message(mem_dim=0) == "slots: mem_dim must be a positive integer, got 0"
    assert message(mem_dim=30, num_mem_heads=4) == "slots: mem_dim (30) must be divisible by num_mem_heads (4)"
    assert message(layers=[]) == "slots: layers must be a non-empty list of integers, 'all' or None, got []"
    assert message(layers=[True]).endswith("got [True]")
    assert message(forget_bias="1") == "slots: forget_bias must be a finite number, got '1'"
    assert SlotsConfig(memory_slots=1, num_mem_heads=1, mem_dim=1, layers=(0,), forget_bias=2).memory_slots == 1


def test_a_bfloat16_backbone_keeps_bfloat16_slots(tmp_path):
    saved = memlm.attach(tiny_model("llama"), SlotsConfig(memory_slots=4))
    saved.write(token_batch(seed=1))
    saved.save_state(tmp_path)  # float32 slots
    memory_model = memlm.attach(tiny_model("llama").to(torch.bfloat16), SlotsConfig(memory_slots=4))
    memory_model.reset(batch_size=2)
    assert memory_model.memories["slots"].memory.dtype == torch.bfloat16
    memory_model.write(token_batch(seed=1))
    assert memory_model.memories["slots"].memory.dtype == torch.bfloat16
    memory_model.load_state(tmp_path)  # read in the model's dtype
    assert memory_model.memories["slots"].memory.dtype == torch.bfloat16


def test_the_hook_adds_the_read_to_the_attention_output_and_only_learned_weights_are_saved():
    backbone = tiny_model("llama")
    attention = backbone.model.layers[1].self_attn
    seen = {}
    attention.register_forward_hook(  # registered first: sees the attention's own output
        lambda _m, _a, kwargs, output: seen.update(hidden=kwargs["hidden_states"], bare=output[0].clone()),
        with_kwargs=True)
    memory_model = memlm.attach(backbone, SlotsConfig(layers=[1], memory_slots=4))
    attention.register_forward_hook(lambda _m, _a, output: seen.update(read_in=output[0].clone()))  # after it
    randomize_memory_weights(memory_model)
    memory = memory_model.memories["slots"]
    memory_model.write(token_batch(seed=1))
    logits(memory_model, token_batch(seed=2), write_memory=False)
    expected = seen["bare"] + memory.layer_memories["1"].read(seen["hidden"], memory.memory[:, 0])
    torch.testing.assert_close(seen["read_in"], expected)
    # the identity slots are where a memory starts, not a learned weight: not in the weights saved
    assert "initial" not in memory.state_dict() and "layer_memories.1.output_gate" in memory.state_dict()


def test_attaching_slots_untrained_says_that_they_need_training(monkeypatch):
    import memlm.model

    monkeypatch.setattr(memlm.model, "_warned", set())
    with pytest.warns(UserWarning, match="'slots' memory starts untrained"):
        memlm.attach(tiny_model("llama"), "slots")


def test_slots_read_gpt2s_positional_hidden_states_too():
    backbone = tiny_model("gpt2")  # GPT-2's attention gets hidden_states positionally, the others by keyword
    probe, bare = token_batch(seed=2), logits(backbone, token_batch(seed=2))
    memory_model = memlm.attach(backbone, SlotsConfig(layers=[0], memory_slots=4))
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    assert memory_model.memories["slots"].updates == 1
    assert not torch.allclose(logits(memory_model, probe, write_memory=False), bare)


def test_a_layers_weights_are_bias_free_projections_gates_and_the_output_gate():
    """The layout the shipped slots presets load into: projections without bias (an added bias would
    also make the zero-state read non-zero), a bias only on the input/forget gates."""
    from memlm.memories.slots import LayerMemory

    names = sorted(name for name, _ in LayerMemory(8, SlotsConfig(memory_slots=3, num_mem_heads=2, mem_dim=4))
                   .named_parameters())
    assert names == ["gates.bias", "gates.weight", "output_gate", "read_out.weight", "read_query.weight",
                     "slot_key_value.weight", "token_key_value.weight", "write_out.weight", "write_query.weight"]
