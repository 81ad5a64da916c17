"""Saving and loading: atomic writes, verified reads, and refusal of files that do not fit."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import hook_counts, randomize_memory_weights, token_batch
from tiny import tiny_model

import memlm
from memlm.model import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, STATE_FILE
from memlm.serialization import load_tensors, save_tensors


def test_tensor_files_round_trip_with_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16)}
    save_tensors(tmp_path / "x.safetensors", tensors, {"note": {"k": [1, 2]}})
    loaded, metadata = load_tensors(tmp_path / "x.safetensors")
    assert metadata == {"note": {"k": [1, 2]}}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "absent.safetensors")


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(memlm.CorruptedFileError, match="not written by memlm"):
        load_tensors(tmp_path / "foreign.safetensors")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(memlm.CorruptedFileError):
        load_tensors(path)


def test_crash_during_save_keeps_the_previous_file(tmp_path, monkeypatch):
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    memory_model.write(token_batch())
    good = memory_model.save_state(tmp_path)
    good_bytes = good.read_bytes()
    memory_model.write(token_batch(seed=5))

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("memlm.serialization.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        memory_model.save_state(tmp_path)
    assert good.read_bytes() == good_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary left behind


def test_state_from_another_model_with_the_same_shape_is_refused(tmp_path):
    saved = memlm.attach(tiny_model("llama", seed=0), "recurrent")
    saved.write(token_batch())
    saved.save_state(tmp_path)
    other = memlm.attach(tiny_model("llama", seed=1), "recurrent")  # same dims, other weights
    with pytest.raises(memlm.IncompatibleMemoryError, match="another model"):
        other.load_state(tmp_path)


def test_state_of_other_memories_is_refused(tmp_path):
    from memlm.config import MemoryConfig
    from memlm.memories.base import Memory
    from memlm.registry import register_memory, unregister_memory

    class NullMemory(Memory):
        """Does nothing (test only)."""

        def attach(self, layout):
            pass

    class NullConfig(MemoryConfig):
        pass

    register_memory("null-test", NullConfig, NullMemory)
    try:
        backbone = tiny_model("llama")
        first = memlm.attach(backbone, "null-test")
        first.save_state(tmp_path)
        first.detach()
        with pytest.raises(memlm.IncompatibleMemoryError, match="null-test"):
            memlm.attach(backbone, "recurrent").load_state(tmp_path)
    finally:
        unregister_memory("null-test")


def test_adapter_files_and_config(tmp_path):
    memory_model = memlm.attach(tiny_model("qwen2"), memlm.RecurrentConfig(decay=0.8, memory_size=12))
    memory_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert config["backbone"]["hidden_size"] == 32 and config["backbone"]["model_type"] == "qwen2"
    assert config["memories"] == [memory_model.memories["recurrent"].config.to_dict()]
    restored = memlm.MemoryModel.from_pretrained(memory_model.detach(), tmp_path)
    assert restored.memories["recurrent"].config.decay == 0.8


def test_corrupted_adapter_files_are_refused_and_leave_no_hooks(tmp_path):
    backbone = tiny_model("llama")
    memory_model = memlm.attach(backbone, "recurrent")
    randomize_memory_weights(memory_model)
    memory_model.save_pretrained(tmp_path)
    memory_model.detach()
    hooks_before = hook_counts(backbone)

    weights = tmp_path / ADAPTER_WEIGHTS_FILE
    original = weights.read_bytes()
    weights.write_bytes(original[:100])
    with pytest.raises(memlm.CorruptedFileError):
        memlm.MemoryModel.from_pretrained(backbone, tmp_path)
    weights.write_bytes(original)

    (tmp_path / ADAPTER_CONFIG_FILE).write_text("{not json")
    with pytest.raises(memlm.CorruptedFileError, match="JSON"):
        memlm.MemoryModel.from_pretrained(backbone, tmp_path)
    assert hook_counts(backbone) == hooks_before


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    backbone = tiny_model("llama")
    writer = memlm.attach(backbone, memlm.RecurrentConfig(memory_size=8))
    writer.save_pretrained(tmp_path)
    writer.detach()
    config = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    config["memories"][0]["memory_size"] = 16  # config edited, weights not
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps(config))
    hooks_before = hook_counts(backbone)
    with pytest.raises(memlm.IncompatibleMemoryError, match="shape"):
        memlm.MemoryModel.from_pretrained(backbone, tmp_path)
    assert hook_counts(backbone) == hooks_before


def test_yaml_config_loading(tmp_path):
    path = tmp_path / "memories.yaml"
    path.write_text("memories:\n  - mechanism: recurrent\n    decay: 0.9\n    memory_size: 32\n")
    (config,) = memlm.load_configs(path)
    assert isinstance(config, memlm.RecurrentConfig) and config.decay == 0.9
    path.write_text("memories:\n  - mechanism: recurrent\n    decay: 7\n")
    with pytest.raises(memlm.ConfigError, match="decay"):
        memlm.load_configs(path)
    path.write_text("memories: [unclosed")
    with pytest.raises(memlm.ConfigError, match="YAML"):
        memlm.load_configs(path)
