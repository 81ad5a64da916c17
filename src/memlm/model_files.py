"""The files a `MemoryModel` saves, and the checks they are read back with.

Weights and state are saved apart (DESIGN principle 3):

* the adapter, PEFT-style: the memories' learned weights and the LoRA adapter's in one safetensors
  file, their configs in a JSON file; small, shared by every user of a trained memory;
* the state: what the memories remember, in one safetensors file per user or session. Memories whose
  state is files (`FileState`) write them into a versioned folder (`knn.000007`) that the state file
  names, so replacing the state file commits the whole save (`MemoryModel.save_state`).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memlm.errors import CorruptedFileError, IncompatibleMemoryError
from memlm.hooks import check_fingerprint
from memlm.lora import BackboneLora
from memlm.serialization import atomic_write_json, load_tensors, read_json, save_tensors

ADAPTER_CONFIG_FILE = "memlm_config.json"
LORA_PREFIX = "lora."  # LoRA weights sit beside the memories' in the weights file, under this prefix
ADAPTER_WEIGHTS_FILE = "memory_weights.safetensors"
STATE_FILE = "memory_state.safetensors"
FORMAT_VERSION = 1


# --- the adapter: learned weights and their configs ------------------------------------------
def save_adapter(directory: Path, memories: nn.ModuleDict, lora: BackboneLora | None, fingerprint: dict[str, Any],
                 dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write the weights file and the config file of `MemoryModel.save_pretrained`."""
    weights = dict(memories.state_dict())
    if lora is not None:
        weights.update({f"{LORA_PREFIX}{name}": tensor for name, tensor in lora.state_dict().items()})
    if dtype is not None:
        weights = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor
                   for name, tensor in weights.items()}
    save_tensors(directory / ADAPTER_WEIGHTS_FILE, weights,
                 {"format": "memlm-weights", "backbone": fingerprint})
    atomic_write_json(directory / ADAPTER_CONFIG_FILE, {
        "format": "memlm-adapter",
        "version": FORMAT_VERSION,
        "backbone": fingerprint,
        "memories": [memory.config.to_dict() for memory in memories.values()],
        "lora": None if lora is None else lora.settings.to_dict(),
        **({"extra": extra} if extra else {}),
    })


def read_adapter(directory: Path, fingerprint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter config and weights in `directory`, checked to be for a backbone of this shape."""
    adapter = read_json(directory / ADAPTER_CONFIG_FILE)
    if not isinstance(adapter, dict) or adapter.get("format") != "memlm-adapter":
        raise CorruptedFileError(f"{directory / ADAPTER_CONFIG_FILE} is not a memlm adapter config")
    if adapter.get("version", 0) > FORMAT_VERSION:
        raise IncompatibleMemoryError(f"{directory} was saved by a newer memlm (format {adapter['version']})")
    tensors, _ = load_tensors(directory / ADAPTER_WEIGHTS_FILE)
    check_fingerprint(adapter["backbone"], fingerprint, what=f"memory weights in {directory}",
                      require_same_weights=False)
    return adapter, tensors


def load_adapter_weights(memories: nn.ModuleDict, lora: BackboneLora | None, tensors: dict[str, torch.Tensor],
                         source: Path, only: list[str] | None = None) -> None:
    """Load saved weights into the attached memories (`only` these, if given) and the LoRA adapter;
    names and shapes must match exactly."""
    lora_weights = {name[len(LORA_PREFIX):]: tensor for name, tensor in tensors.items()
                    if name.startswith(LORA_PREFIX)}
    tensors = {name: tensor for name, tensor in tensors.items() if not name.startswith(LORA_PREFIX)}
    if lora_weights and lora is None:
        raise IncompatibleMemoryError(f"weights in {source} hold a LoRA adapter, but its config names none")
    if lora_weights and lora is not None:
        lora.load_state_dict(lora_weights, source)
    expected = {name: tensor for name, tensor in memories.state_dict().items()
                if only is None or name.split(".", 1)[0] in only}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise IncompatibleMemoryError(
            f"memory weights in {source} do not match the attached memories "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise IncompatibleMemoryError(
                f"memory weight {name} in {source} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)}")
    own = {name: tensor.to(expected[name].dtype) for name, tensor in tensors.items()}
    memories.load_state_dict({**memories.state_dict(), **own}, strict=True)


# --- the state: what the memories remember ---------------------------------------------------
def state_metadata(fingerprint: dict[str, Any], memories: nn.ModuleDict, folders: dict[str, str]) -> dict[str, Any]:
    """What the state file records beside the tensors: its backbone, the memories' configs and
    the folder of each memory whose state is files."""
    return {
        "format": "memlm-state",
        "version": FORMAT_VERSION,
        "backbone": fingerprint,
        "memories": {name: memory.config.to_dict() for name, memory in memories.items()},
        **({"files": folders} if folders else {}),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def read_state(path: Path, fingerprint: dict[str, Any], names: list[str]
               ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The state file at `path`, checked to be for this backbone (same weights) and for the memories
    `names`: each memory's tensors, and the folders it names for memories whose state is files."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != "memlm-state":
        raise CorruptedFileError(f"{path} is not a memlm state file")
    check_fingerprint(metadata.get("backbone", {}), fingerprint,
                      what=f"memory state in {path}", require_same_weights=True)
    saved_names = sorted(metadata.get("memories", {}))
    if saved_names != sorted(names):
        raise IncompatibleMemoryError(
            f"memory state in {path} is for memories {saved_names}, "
            f"but the attached memories are {sorted(names)}")
    per_memory: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, value in tensors.items():
        name, _, entry = key.partition(".")
        per_memory[name][entry] = value
    folders = metadata.get("files", {})  # absent: saved before versioned folders, files in `name/`
    if not isinstance(folders, dict):
        raise CorruptedFileError(f"{path} names its state folders wrongly ({folders!r})")
    return per_memory, folders


_STATE_FOLDER = re.compile(r"[A-Za-z0-9_-]+\.[0-9]{6,}")


def state_folder(path: Path, folders: dict[str, Any], name: str) -> str:
    """The folder of memory `name`'s state files, as the state file at `path` names it: `name.NNNNNN`
    or, from saves before versioned folders, `name`; anything else (`../x`) is refused."""
    folder = folders.get(name, name)
    if not (folder == name or (isinstance(folder, str) and _STATE_FOLDER.fullmatch(folder)
                               and folder.rsplit(".", 1)[0] == name)):
        raise CorruptedFileError(f"{path} names {folder!r} as the folder of {name!r}'s state")
    return folder


def next_state_folder(directory: Path, name: str) -> str:
    """A folder name for a memory's state files that no earlier save (finished or not) has used."""
    numbers = [int(entry.name.rsplit(".", 1)[1]) for entry in directory.glob(f"{name}.*")
               if _STATE_FOLDER.fullmatch(entry.name) and entry.name.rsplit(".", 1)[0] == name]
    return f"{name}.{1 + max(numbers, default=0):06d}"


def retire_state_folders(directory: Path, name: str, current: str) -> None:
    """After a save committed: point `name` at `current` (a symbolic link; a real folder left by an
    older memlm is removed) and remove the folders of earlier saves. None of this is needed for
    loading (the state file names its folder), so a crash in here loses nothing."""
    link = directory / name
    staging = directory / f".{name}.link.tmp"
    staging.unlink(missing_ok=True)
    os.symlink(current, staging)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(staging, link)
    for entry in directory.glob(f"{name}.*"):
        if entry.name != current and _STATE_FOLDER.fullmatch(entry.name) and entry.name.rsplit(".", 1)[0] == name:
            shutil.rmtree(entry, ignore_errors=True)
