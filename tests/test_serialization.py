"""Tensor files: checksummed safetensors with metadata; foreign or damaged files are refused."""

from __future__ import annotations

import os

import pytest
import torch

import memlm
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


def test_every_flipped_byte_is_refused_or_loads_the_same_tensors(tmp_path):
    """A flip in the tensor bytes fails the checksum; a flip anywhere else (header, lengths, metadata)
    is refused as unreadable or leaves the tensors exactly as saved (nothing loads as other data)."""
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16)}
    save_tensors(tmp_path / "x.safetensors", tensors, {"note": "n"})
    data = (tmp_path / "x.safetensors").read_bytes()
    data_start = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header length, header, tensor bytes
    refused_in_data = 0
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        (tmp_path / "y.safetensors").write_bytes(bytes(damaged))
        try:
            loaded, _ = load_tensors(tmp_path / "y.safetensors")
        except memlm.CorruptedFileError as error:
            if position >= data_start:
                assert "checksum" in str(error)
                refused_in_data += 1
            continue
        assert position < data_start, f"a flip at tensor byte {position} loaded"
        assert sorted(loaded) == sorted(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert refused_in_data == len(data) - data_start > 0
