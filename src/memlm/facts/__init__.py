"""Facts per user, with no language model in the loop: the store, the learning and ranking logic,
rule-based extraction from chat messages, and the mem0-style `FactMemory` API.

Nothing here imports torch or transformers (`python -c "import memlm.facts"` loads neither): a
service that only stores and searches facts stays small. The `bank` memory
(`memlm.memories.bank`) is the adapter that connects a `FactBank` to a language model.

Example:
    >>> from memlm.facts import FactMemory
    >>> with FactMemory("facts.sqlite") as memory:
    ...     memory.add("My dog is called Biscuit.", user="ada")
    ...     memory.search("What is my dog's name?", user="ada")[0]["memory"]
    "The user's dog is called Biscuit."
"""

from memlm.facts.api import AsyncMemory, FactMemory
from memlm.facts.bank import FactBank, FactBankConfig, LearnResult, RetrievedFact
from memlm.facts.extraction import ExtractedFact, extract_facts
from memlm.facts.store import (
    DuplicateFactError,
    Fact,
    FactChange,
    FactNotFoundError,
    FactStore,
    UnknownUserError,
)

__all__ = [
    "AsyncMemory",
    "DuplicateFactError",
    "ExtractedFact",
    "Fact",
    "FactBank",
    "FactBankConfig",
    "FactChange",
    "FactMemory",
    "FactNotFoundError",
    "FactStore",
    "LearnResult",
    "RetrievedFact",
    "UnknownUserError",
    "extract_facts",
]
