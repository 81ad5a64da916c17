"""Every preset works end to end: attach, memorize, generate (cached = uncached), save and reload."""

from __future__ import annotations

import pytest
import torch
from helpers import logits, token_batch
from tiny import tiny_model

import memlm
from memlm.registry import BUILTIN_PRESETS


@pytest.mark.parametrize("preset", sorted(name for name, p in BUILTIN_PRESETS.items() if p.weights is None))
def test_each_preset_memorizes_generates_and_round_trips(preset, tokenizer, tmp_path):
    backbone = tiny_model("llama")
    memory_model = memlm.attach(backbone, preset, tokenizer=tokenizer)
    (config,) = [memory.config for memory in memory_model.memories.values()]
    assert all(config.to_dict()[key] == value for key, value in BUILTIN_PRESETS[preset].config.items())
    memory_model.memorize(token_batch(1, length=40, seed=1), segment_length=16, progress=False)
    prompt = token_batch(1, length=6, seed=2)
    options = dict(max_new_tokens=6, do_sample=False, write_memory=False, pad_token_id=257)
    cached = memory_model.generate(prompt, use_cache=True, **options)
    assert torch.equal(cached, memory_model.generate(prompt, use_cache=False, **options))
    expected = logits(memory_model, prompt, write_memory=False)
    memory_model.save_pretrained(tmp_path / "weights")
    memory_model.save_state(tmp_path / "state")
    restored = memlm.MemoryModel.from_pretrained(memory_model.detach(), tmp_path / "weights", tokenizer=tokenizer)
    restored.load_state(tmp_path / "state")
    torch.testing.assert_close(logits(restored, prompt, write_memory=False), expected, atol=1e-5, rtol=0)


def test_knn_joint_lm_uses_both_joint_attention_and_the_knn_lm_mixture():
    backbone = tiny_model("llama")
    text = token_batch(1, length=48, seed=5)
    results = {}
    for name in ("knn-joint-lm", "knn-joint", "knn-lm"):
        model = memlm.attach(backbone, name)
        model.memorize(text[:, :32], segment_length=16, progress=False)
        results[name] = logits(model, text[:, 32:], write_memory=False)
        model.detach()
    assert not torch.allclose(results["knn-joint-lm"], results["knn-joint"], atol=1e-4)
    assert not torch.allclose(results["knn-joint-lm"], results["knn-lm"], atol=1e-4)
    assert torch.allclose(results["knn-joint-lm"].exp().sum(-1), torch.ones(1, 16), atol=1e-4)  # a mixture


def test_bank_latent_fuses_only_through_its_gated_reader(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), "bank-latent", tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    bank.learn("The user's cat is called Miso.", importance=1.0)
    messages = [{"role": "user", "content": "What is my cat called?"}]
    assert memory_model.augment_messages(messages) == (messages, [])  # nothing goes into the prompt
    assert bank.reader is not None and torch.count_nonzero(bank.reader.gate) == 0
