"""Memory mechanisms, one per module. Importing this package registers all of them."""

from memlm.memories import bank, knn, recurrent  # noqa: F401
from memlm.memories.base import Memory, MemoryContext

__all__ = ["Memory", "MemoryContext"]
