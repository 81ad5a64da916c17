"""memlm: memory for Hugging Face causal language models.

Example:
    >>> import memlm
    >>> model, tokenizer = memlm.load_backbone()          # embedded SmolLM2-135M-Instruct
    >>> mm = memlm.attach(model, memlm.RecurrentConfig(decay=0.95), tokenizer=tokenizer)
    >>> ids = tokenizer("The capital of France is", return_tensors="pt")
    >>> print(tokenizer.decode(mm.generate(**ids, max_new_tokens=8)[0]))

Names are imported on first use, so `import memlm` (and the torch-free `memlm.facts`) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memlm.config import MemoryConfig, load_configs
from memlm.errors import (
    BackboneNotFoundError,
    ConfigError,
    CorruptedFileError,
    IncompatibleMemoryError,
    MemlmError,
    MemoryStateError,
    StorageError,
    UnknownMechanismError,
)
from memlm.registry import (
    available_mechanisms,
    available_presets,
    get_mechanism,
    make_config,
    register_memory,
    register_preset,
)

__version__ = "0.1.0"

_LAZY = {
    "Backbone": "memlm.backbone", "load_backbone": "memlm.backbone",
    "MemoryModel": "memlm.model", "attach": "memlm.model",
    "RecurrentConfig": "memlm.memories.recurrent", "RecurrentMemory": "memlm.memories.recurrent",
    "KnnConfig": "memlm.memories.knn", "KnnMemory": "memlm.memories.knn",
    "BankConfig": "memlm.memories.bank", "BankMemory": "memlm.memories.bank",
    "SlotsConfig": "memlm.memories.slots", "SlotsMemory": "memlm.memories.slots",
    "ImportanceConfig": "memlm.memories.importance", "ImportanceMemory": "memlm.memories.importance",
    "AutoMemoryModule": "memlm.memories.importance",
    "FactMemory": "memlm.facts.api", "AsyncMemory": "memlm.facts.api",
}
# `memlm.Memory` is the fact API's first name, kept for code written against it (and for mem0 users).
_ALIASES = {"Memory": ("memlm.facts.api", "FactMemory")}

if TYPE_CHECKING:
    from memlm.backbone import Backbone, load_backbone
    from memlm.facts.api import AsyncMemory, FactMemory
    from memlm.facts.api import FactMemory as Memory
    from memlm.memories.bank import BankConfig, BankMemory
    from memlm.memories.importance import AutoMemoryModule, ImportanceConfig, ImportanceMemory
    from memlm.memories.knn import KnnConfig, KnnMemory
    from memlm.memories.recurrent import RecurrentConfig, RecurrentMemory
    from memlm.memories.slots import SlotsConfig, SlotsMemory
    from memlm.model import MemoryModel, attach


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name], name
    elif name in _ALIASES:
        module, attribute = _ALIASES[name]
    else:
        raise AttributeError(f"module 'memlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "AsyncMemory",
    "AutoMemoryModule",
    "Backbone",
    "BackboneNotFoundError",
    "BankConfig",
    "BankMemory",
    "ConfigError",
    "CorruptedFileError",
    "FactMemory",
    "ImportanceConfig",
    "ImportanceMemory",
    "IncompatibleMemoryError",
    "KnnConfig",
    "KnnMemory",
    "MemlmError",
    "Memory",
    "MemoryConfig",
    "MemoryModel",
    "MemoryStateError",
    "StorageError",
    "RecurrentConfig",
    "RecurrentMemory",
    "SlotsConfig",
    "SlotsMemory",
    "UnknownMechanismError",
    "attach",
    "available_mechanisms",
    "available_presets",
    "get_mechanism",
    "load_backbone",
    "load_configs",
    "make_config",
    "register_memory",
    "register_preset",
]
