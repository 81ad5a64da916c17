"""Memory mechanisms, one per module, and the `Memory` core they share (`base`).

Mechanisms are registered in `memlm.registry.BUILTIN_MECHANISMS` and imported when first used.
"""

from memlm.memories.base import (
    AuxiliaryLoss,
    FileState,
    InputRewriting,
    Inspectable,
    Memory,
    MemoryContext,
    PromptFusion,
    Provenance,
    SegmentInputs,
    StaticDecode,
    TextLearning,
)

__all__ = ["AuxiliaryLoss", "FileState", "InputRewriting", "Inspectable", "Memory", "MemoryContext", "PromptFusion",
           "Provenance", "SegmentInputs", "StaticDecode", "TextLearning"]
