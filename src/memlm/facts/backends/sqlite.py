"""The embedded default: SQLite rows plus per-user FAISS indexes (`memlm.facts.store.FactStore`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memlm.facts.backends import register_backend
from memlm.facts.store import FactStore


def open_sqlite(location: Any, dimension: int, encoder: str, clock: Callable[[], float] = time.time) -> FactStore:
    """`None`: in memory; a path; or `sqlite:///relative/path`, `sqlite:////absolute/path`."""
    if isinstance(location, str) and location.lower().startswith("sqlite://"):
        location = location[len("sqlite:///"):] or None
    return FactStore(location, dimension, encoder, clock=clock)


register_backend("sqlite", open_sqlite)
