"""memlm: memory for Hugging Face causal language models.

Example:
    >>> import memlm
    >>> model, tokenizer = memlm.load_backbone()          # embedded SmolLM2-135M-Instruct
    >>> mm = memlm.attach(model, memlm.RecurrentConfig(decay=0.95), tokenizer=tokenizer)
    >>> ids = tokenizer("The capital of France is", return_tensors="pt")
    >>> print(tokenizer.decode(mm.generate(**ids, max_new_tokens=8)[0]))
"""

from memlm.backbone import Backbone, load_backbone
from memlm.config import MemoryConfig, load_configs
from memlm.errors import (
    BackboneNotFoundError,
    ConfigError,
    CorruptedFileError,
    IncompatibleMemoryError,
    MemlmError,
    MemoryStateError,
    UnknownMechanismError,
)
from memlm.memories.bank import BankConfig, BankMemory
from memlm.memories.knn import KnnConfig, KnnMemory
from memlm.memories.recurrent import RecurrentConfig, RecurrentMemory
from memlm.model import MemoryModel, attach
from memlm.registry import (
    available_mechanisms,
    available_presets,
    get_mechanism,
    make_config,
    register_memory,
    register_preset,
)
from memlm.user_memory import Memory

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BankConfig",
    "BankMemory",
    "BackboneNotFoundError",
    "ConfigError",
    "CorruptedFileError",
    "IncompatibleMemoryError",
    "KnnConfig",
    "KnnMemory",
    "MemlmError",
    "Memory",
    "MemoryConfig",
    "MemoryModel",
    "MemoryStateError",
    "RecurrentConfig",
    "RecurrentMemory",
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
