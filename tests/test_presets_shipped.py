"""Trained presets shipped in the package: small, complete, loaded by name, refused by other models."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_model

import memlm
from memlm.model import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LORA_PREFIX
from memlm.registry import BUILTIN_PRESETS
from memlm.serialization import load_tensors

TRAINED = sorted(name for name, preset in BUILTIN_PRESETS.items() if preset.weights is not None)
MAX_BYTES = 8 * 2**20


@pytest.mark.parametrize("name", TRAINED)
def test_each_trained_preset_ships_small_weights_its_training_config_and_curves(name):
    folder = BUILTIN_PRESETS[name].path
    weights = folder / ADAPTER_WEIGHTS_FILE
    assert weights.stat().st_size <= MAX_BYTES  # LoRA included
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    assert config["extra"]["train_config"]["model"] and config["extra"]["steps"] > 0
    assert (folder / "curves.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(memlm.ConfigError, match="trained weights"):
        memlm.make_config(name)  # a trained preset is weights, not a config


@pytest.mark.parametrize("name", TRAINED)
def test_a_trained_preset_is_refused_by_a_model_it_was_not_trained_for(name):
    backbone = tiny_model("llama")
    with pytest.raises(memlm.IncompatibleMemoryError, match="hidden_size"):
        memlm.attach(backbone, name)
    assert not any(".lora_" in n for n, _ in backbone.named_parameters())  # nothing left behind


@pytest.mark.integration
@pytest.mark.parametrize("name", TRAINED)
def test_a_trained_preset_loads_by_name_on_the_default_model_and_still_answers_paris(name, default_backbone):
    model, tokenizer = default_backbone
    memory_model = memlm.attach(model, name, tokenizer=tokenizer)
    try:
        # Every weight attached is the shipped one (a load that skipped a tensor would leave the random
        # initialisation there), and LoRA's too.
        shipped, _ = load_tensors(BUILTIN_PRESETS[name].path / ADAPTER_WEIGHTS_FILE)
        attached = {**memory_model.memories.state_dict(),
                    **{LORA_PREFIX + key: value for key, value in model.named_parameters() if ".lora_" in key}}
        assert sorted(attached) == sorted(shipped)
        for key, tensor in shipped.items():
            assert torch.equal(attached[key].cpu(), tensor.to(attached[key].dtype)), key
        encoded = tokenizer("The capital of France is", return_tensors="pt")
        reply = memory_model.generate(**encoded, max_new_tokens=8, do_sample=False, write_memory=False,
                                      pad_token_id=tokenizer.pad_token_id)
        assert "Paris" in tokenizer.decode(reply[0], skip_special_tokens=True)
    finally:
        memory_model.detach()
