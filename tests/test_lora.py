"""A LoRA adapter on the backbone: attached in place, trained, saved with the memories, removed cleanly."""

from __future__ import annotations

import pytest
import torch
from helpers import logits, token_batch
from tiny import tiny_model

import memlm
from memlm.lora import LoraSettings


def _types(model):
    return {name: type(module) for name, module in model.named_modules()}


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_an_adapter_starts_silent_trains_and_leaves_no_trace(architecture, tmp_path):
    backbone = tiny_model(architecture, num_layers=3)
    probe = token_batch(seed=3)
    bare, types = logits(backbone, probe), _types(backbone)
    memory_model = memlm.attach(backbone, "recurrent")
    memory_model.add_lora(LoraSettings(r=4, layers=[1, 2]))
    torch.testing.assert_close(logits(memory_model, probe, write_memory=False), bare)  # B starts at zero
    adapter = memory_model.lora.named_parameters()
    assert adapter and all(".1." in name or ".2." in name for name, _ in adapter)  # only the chosen layers
    assert {id(p) for p in memory_model.trainable_parameters()} >= {id(p) for _, p in adapter}
    with torch.no_grad():
        for _, parameter in adapter:
            parameter.normal_(0, 0.5)
    trained = logits(memory_model, probe, write_memory=False)
    assert not torch.allclose(trained, bare, atol=1e-4)
    with memory_model.paused() as paused:
        torch.testing.assert_close(logits(paused, probe), bare)  # paused: the bare backbone, adapter off
    memory_model.save_pretrained(tmp_path)
    restored = memlm.MemoryModel.from_pretrained(memory_model.detach(), tmp_path)
    torch.testing.assert_close(logits(restored, probe, write_memory=False), trained, atol=1e-6, rtol=0)
    assert restored.detach() is backbone
    assert _types(backbone) == types and all(p.requires_grad for p in backbone.parameters())
    torch.testing.assert_close(logits(backbone, probe), bare)


def test_bad_adapters_are_refused(tmp_path):
    with pytest.raises(memlm.ConfigError, match="r must"):
        LoraSettings(r=0)
    with pytest.raises(memlm.ConfigError, match="layers"):
        LoraSettings(layers=[])
    with pytest.raises(memlm.ConfigError, match="linear layer"):
        memlm.attach(tiny_model("llama"), []).add_lora(LoraSettings(target_modules=["no_such_proj"]))
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    memory_model.add_lora({"r": 2})
    with pytest.raises(memlm.ConfigError, match="already"):
        memory_model.add_lora({"r": 2})
    memory_model.save_pretrained(tmp_path, dtype=torch.bfloat16)  # how presets ship
    from memlm.model import ADAPTER_WEIGHTS_FILE
    from memlm.serialization import load_tensors

    saved, _ = load_tensors(tmp_path / ADAPTER_WEIGHTS_FILE)
    assert all(t.dtype == torch.bfloat16 for t in saved.values()) and any(k.startswith("lora.") for k in saved)
    other = tiny_model("llama")
    restored = memlm.MemoryModel.from_pretrained(other, tmp_path)
    assert next(iter(restored.memories.parameters())).dtype == torch.float32  # back in the model's dtype
