"""The contract every registered memory mechanism honours on every tiny backbone.

Parametrized over `memlm.available_mechanisms()` x (GPT-2, Llama, Qwen2, Gemma3): a new mechanism
is covered here as soon as it is registered.
"""

from __future__ import annotations

import pytest
import torch
from helpers import hook_counts, logits, randomize_memory_weights, token_batch

import memlm
from memlm.model import ADAPTER_WEIGHTS_FILE
from memlm.serialization import load_tensors


def attach_and_write(backbone, mechanism, batch=None):
    """Attach a mechanism and write one segment, so its state is not empty."""
    memory_model = memlm.attach(backbone, mechanism)
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
    memory_model = memlm.attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    assert not torch.allclose(logits(memory_model, input_ids, write_memory=False), bare, atol=1e-4)


def test_generate_with_cache_equals_without(backbone, mechanism):
    memory_model = memlm.attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    prompt = token_batch(seed=3, length=6)
    options = dict(max_new_tokens=8, do_sample=False, write_memory=False, pad_token_id=257)
    cached = memory_model.generate(prompt, use_cache=True, **options)
    uncached = memory_model.generate(prompt, use_cache=False, **options)
    assert torch.equal(cached, uncached)


def test_batch_rows_are_independent(backbone, mechanism):
    memory_model = memlm.attach(backbone, mechanism)
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


def test_save_load_round_trips_weights_and_state(backbone, mechanism, tmp_path):
    memory_model = memlm.attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    memory_model.save_pretrained(tmp_path / "adapter")
    memory_model.save_state(tmp_path / "state")
    probe = token_batch(seed=8)
    expected = logits(memory_model, probe, write_memory=False)
    expected_state = {k: v.clone() for k, v in memory_model.memories[mechanism].state_tensors().items()}

    saved, _ = load_tensors(tmp_path / "adapter" / ADAPTER_WEIGHTS_FILE)
    assert set(saved) == set(memory_model.memories.state_dict())  # memory weights only
    backbone_tensors = {id(t) for t in [*backbone.parameters(), *backbone.buffers()]}
    assert not any(id(t) in backbone_tensors for t in [*memory_model.memories.parameters(),
                                                       *memory_model.memories.buffers()])

    restored = memlm.MemoryModel.from_pretrained(memory_model.detach(), tmp_path / "adapter")
    restored.load_state(tmp_path / "state")
    for name, tensor in restored.memories.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    for key, value in restored.memories[mechanism].state_tensors().items():
        assert torch.equal(value, expected_state[key]), key
    # Weights and state are bit-identical; BLAS may still round differently at new addresses.
    torch.testing.assert_close(logits(restored, probe, write_memory=False), expected, atol=1e-6, rtol=0)


def test_detach_restores_the_bare_model(backbone, mechanism):
    probe = token_batch(seed=9)
    bare = logits(backbone, probe)
    hooks_before = hook_counts(backbone)
    memory_model = memlm.attach(backbone, mechanism)
    randomize_memory_weights(memory_model)
    memory_model.write(token_batch(seed=1))
    assert hook_counts(backbone) > hooks_before
    returned = memory_model.detach()
    assert returned is backbone
    assert hook_counts(backbone) == hooks_before
    assert torch.equal(logits(backbone, probe), bare)


def test_weights_for_another_hidden_size_are_refused(architecture, mechanism, tmp_path):
    from tiny import tiny_model

    small = memlm.attach(tiny_model(architecture, hidden_size=32), mechanism)
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
    before = {k: v.clone() for k, v in memory_model.memories[mechanism].state_tensors().items()}
    summary_before = memory_model.memories[mechanism].summary()

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

    after = memory_model.memories[mechanism].state_tensors()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert memory_model.memories[mechanism].summary() == summary_before
    assert good.read_bytes() == good_bytes
