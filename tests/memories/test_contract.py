"""The contract every registered memory mechanism honours on every tiny backbone.

Parametrized over `memlm.available_mechanisms()` and the combinations below x (GPT-2, Llama, Qwen2,
Gemma3): a new mechanism is covered here as soon as it is registered. A combination ("slots+knn",
the internal + external pair) must honour the same contract as each of its parts.
"""

from __future__ import annotations

import pytest
import torch
from helpers import hook_counts, logits, randomize_memory_weights, token_batch

import memlm
from memlm.model import ADAPTER_WEIGHTS_FILE
from memlm.serialization import load_tensors

# Every learned tensor each mechanism saves, for its default config on a tiny backbone: the weights
# file must hold exactly these (no state: no GRU vector, slot contents or stored vectors).
EXPECTED_WEIGHTS = {
    "recurrent": {f"recurrent.gru.{name}" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                 | {f"recurrent.readouts.{point}.{name}" for point in ("input", "middle", "top")
                    for name in ("proj.weight", "gate")},
    "knn": {"knn.gate"},
    "bank": {f"bank.reader.{name}" for name in ("query.weight", "key.weight", "value.weight", "gate")},
    "slots": {f"slots.layer_memories.{layer}.{name}" for layer in (0, 1)
              for name in ("read_query.weight", "slot_key_value.weight", "read_out.weight", "output_gate",
                           "write_query.weight", "token_key_value.weight", "write_out.weight", "gates.weight",
                           "gates.bias")},
    "importance": {f"importance.scorer.{part}.{name}" for part in ("norm", "project", "neighbours", "out")
                   for name in ("weight", "bias")},
    "template": {"template.gate"},
}


COMBINATIONS = ["slots+knn", "importance+recurrent"]


@pytest.fixture(params=[*memlm.available_mechanisms(), *COMBINATIONS])
def mechanism(request) -> str:
    return request.param


def specs(mechanism: str) -> list[str]:
    return mechanism.split("+")


def attach(backbone, mechanism):
    return memlm.attach(backbone, specs(mechanism))


def states(memory_model) -> dict[str, torch.Tensor]:
    """Every memory's state tensors, by memory and entry."""
    return {f"{name}.{key}": value.clone() for name, memory in memory_model.memories.items()
            for key, value in memory.state_tensors().items()}


def summaries(memory_model) -> dict[str, dict]:
    return {name: memory.summary() for name, memory in memory_model.memories.items()}


def attach_and_write(backbone, mechanism, batch=None):
    """Attach a mechanism and write one segment, so its state is not empty."""
    memory_model = attach(backbone, mechanism)
    memory_model.write(token_batch(seed=1) if batch is None else batch)
    return memory_model


def test_untrained_memory_leaves_logits_unchanged(backbone, mechanism):
    input_ids = token_batch(seed=2)
    bare = logits(backbone, input_ids)
    memory_model = attach_and_write(backbone, mechanism)
    with_memory = logits(memory_model, input_ids, write_memory=False)
    torch.testing.assert_close(with_memory, bare, atol=1e-5, rtol=0)


def test_trained_memory_changes_logits(backbone, mechanism):
    # Guards the tests below: with non-zero weights the memory must actually act.
    input_ids = token_batch(seed=2)
    bare = logits(backbone, input_ids)
    memory_model = attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    assert not torch.allclose(logits(memory_model, input_ids, write_memory=False), bare, atol=1e-4)


def test_generate_with_cache_equals_without(backbone, mechanism):
    memory_model = attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    prompt = token_batch(seed=3, length=6)
    options = dict(max_new_tokens=8, do_sample=False, write_memory=False, pad_token_id=257)
    cached = memory_model.generate(prompt, use_cache=True, **options)
    uncached = memory_model.generate(prompt, use_cache=False, **options)
    assert torch.equal(cached, uncached)


def test_batch_rows_are_independent(backbone, mechanism):
    memory_model = attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    first_segment, second_segment = token_batch(seed=4), token_batch(seed=5)

    def row0_logits_after_two_segments(segment1, segment2):
        memory_model.reset()
        memory_model.write(segment1)
        return logits(memory_model, segment2, write_memory=False)[0]

    reference = row0_logits_after_two_segments(first_segment, second_segment)
    changed1, changed2 = first_segment.clone(), second_segment.clone()
    changed1[1], changed2[1] = token_batch(1, seed=6)[0], token_batch(1, seed=7)[0]
    torch.testing.assert_close(row0_logits_after_two_segments(changed1, changed2), reference,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("copies", [2, 3])
def test_repeated_rows_read_the_memory_of_the_row_they_repeat(backbone, mechanism, copies):
    """Beam search and num_return_sequences run each input row `copies` times (repeat_interleave):
    every copy must read its own row's memory, not another row's or none."""
    memory_model = attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))  # two rows with different memories
    probe = token_batch(1, seed=2).expand(2, -1)  # the same tokens in both rows
    per_row = logits(memory_model, probe, write_memory=False)
    assert not torch.allclose(per_row[0], per_row[1], atol=1e-4)  # the rows' memories differ
    repeated = logits(memory_model, probe.repeat_interleave(copies, dim=0), write_memory=False)
    torch.testing.assert_close(repeated, per_row.repeat_interleave(copies, dim=0), atol=1e-5, rtol=1e-5)
    beams = memory_model.generate(probe, max_new_tokens=3, num_beams=copies, num_return_sequences=copies,
                                  do_sample=False, write_memory=False, pad_token_id=257)
    assert beams.shape == (2 * copies, probe.shape[1] + 3)
    with pytest.raises(memlm.MemoryStateError, match="reset"):
        logits(memory_model, token_batch(3, seed=2), write_memory=False)  # 2 rows remembered, 3 asked


def test_state_from_another_model_with_the_same_shape_is_refused(architecture, mechanism, tmp_path):
    from tiny import tiny_model

    saved = attach_and_write(tiny_model(architecture, seed=0), mechanism)
    saved.save_state(tmp_path)
    other = attach_and_write(tiny_model(architecture, seed=1), mechanism)  # same dims, other weights
    before = states(other)
    with pytest.raises(memlm.IncompatibleMemoryError, match="another model"):
        other.load_state(tmp_path)
    after = states(other)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_save_load_round_trips_weights_and_state(backbone, mechanism, tmp_path):
    memory_model = attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    memory_model.save_pretrained(tmp_path / "adapter")
    memory_model.save_state(tmp_path / "state")
    probe = token_batch(seed=8)
    expected = logits(memory_model, probe, write_memory=False)
    expected_state = states(memory_model)

    saved, _ = load_tensors(tmp_path / "adapter" / ADAPTER_WEIGHTS_FILE)
    for name in specs(mechanism):
        assert name in EXPECTED_WEIGHTS, f"declare the weights {name} saves in EXPECTED_WEIGHTS"
    assert set(saved) == set().union(*(EXPECTED_WEIGHTS[name] for name in specs(mechanism)))
    # More remembered state must not change what the weights file holds.
    memory_model.write(token_batch(seed=11))
    memory_model.save_pretrained(tmp_path / "adapter-later")
    later, _ = load_tensors(tmp_path / "adapter-later" / ADAPTER_WEIGHTS_FILE)
    assert {k: v.shape for k, v in later.items()} == {k: v.shape for k, v in saved.items()}
    assert all(torch.equal(later[k], saved[k]) for k in saved)
    backbone_tensors = {id(t) for t in [*backbone.parameters(), *backbone.buffers()]}
    assert not any(id(t) in backbone_tensors for t in [*memory_model.memories.parameters(),
                                                       *memory_model.memories.buffers()])

    restored = memlm.MemoryModel.from_pretrained(memory_model.detach(), tmp_path / "adapter")
    restored.load_state(tmp_path / "state")
    for name, tensor in restored.memories.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    for key, value in states(restored).items():
        assert torch.equal(value, expected_state[key]), key
    # Weights and state are bit-identical; BLAS may still round differently at new addresses.
    torch.testing.assert_close(logits(restored, probe, write_memory=False), expected, atol=1e-6, rtol=0)


def test_detach_restores_the_bare_model(backbone, mechanism):
    probe = token_batch(seed=9)
    bare = logits(backbone, probe)
    hooks_before = hook_counts(backbone)
    memory_model = attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    assert hook_counts(backbone) > hooks_before
    returned = memory_model.detach()
    assert returned is backbone
    assert hook_counts(backbone) == hooks_before
    assert torch.equal(logits(backbone, probe), bare)


def test_weights_for_another_hidden_size_are_refused(architecture, mechanism, tmp_path):
    from tiny import tiny_model

    small = attach(tiny_model(architecture, hidden_size=32), mechanism)
    small.save_pretrained(tmp_path)
    wide = tiny_model(architecture, hidden_size=64)
    hooks_before = hook_counts(wide)
    with pytest.raises(memlm.IncompatibleMemoryError, match="hidden_size"):
        memlm.MemoryModel.from_pretrained(wide, tmp_path)
    assert hook_counts(wide) == hooks_before  # a failed load leaves nothing attached


def test_corrupted_state_is_refused_and_current_state_kept(backbone, mechanism, tmp_path):
    memory_model = attach_and_write(backbone, mechanism)
    good = memory_model.save_state(tmp_path / "good")
    good_bytes = good.read_bytes()
    before = states(memory_model)
    summary_before = summaries(memory_model)

    broken = tmp_path / "broken" / good.name
    broken.parent.mkdir()
    broken.write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated
    with pytest.raises(memlm.CorruptedFileError):
        memory_model.load_state(broken.parent)
    flipped = bytearray(good_bytes)
    flipped[-3] ^= 0xFF  # one byte of tensor data
    broken.write_bytes(bytes(flipped))
    with pytest.raises(memlm.CorruptedFileError, match="checksum"):
        memory_model.load_state(broken.parent)

    after = states(memory_model)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert summaries(memory_model) == summary_before
    assert good.read_bytes() == good_bytes
