"""Where facts live: one interface (`FactBackend`), one module per engine, chosen by a URL.

| URL                                   | backend                          | module      |
|---------------------------------------|----------------------------------|-------------|
| `None`                                | SQLite in memory + FAISS         | `sqlite`    |
| a path, or `sqlite:///path`           | SQLite file + FAISS (the default) | `sqlite`    |
| `postgresql://user:pw@host/db`        | PostgreSQL + pgvector (psycopg)  | `postgres`  |
| `milvus:///folder`, `milvus://host:19530?records=file` | Milvus vectors + SQLite rows | `milvus` |

`MEMLM_STORE` names the store the command line and the server use when none is given; the library
uses it when `Memory()` is called with no path at all. A backend registers itself with
`register_backend(scheme, opener)`; `open_fact_store(url, ...)` picks it by the URL's scheme.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError
from memlm.facts.backends.base import FactBackend

STORE_ENV = "MEMLM_STORE"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_OPENERS: dict[str, Callable[..., FactBackend]] = {}


def register_backend(scheme: str, opener: Callable[..., FactBackend]) -> None:
    """`opener(url, dimension, encoder, clock)` opens the store a URL of this scheme names."""
    _OPENERS[scheme] = opener


def scheme_of(location: str | os.PathLike | None) -> str:
    if location is None or isinstance(location, Path):
        return "sqlite"
    match = _SCHEME.match(str(location))
    return match.group(1).lower() if match else "sqlite"


def _builtin(scheme: str) -> None:
    """Import the module of a built-in backend on first use (its client library is an extra)."""
    modules = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres", "milvus": "milvus"}
    if scheme in modules and scheme not in _OPENERS:
        import importlib

        importlib.import_module(f"memlm.facts.backends.{modules[scheme]}")


def open_fact_store(location: str | os.PathLike | None, dimension: int, encoder: str,
                    clock: Callable[[], float] = time.time) -> FactBackend:
    """Open the fact store at `location`: `None` (SQLite in memory), a file path, or a URL."""
    scheme = scheme_of(location)
    _builtin(scheme)
    if scheme not in _OPENERS:
        raise ConfigError(f"no fact store backend for {scheme}:// URLs; known: {sorted(_OPENERS) or ['sqlite']}")
    return _OPENERS[scheme](location, dimension, encoder, clock)


def default_store(fallback: Any) -> Any:
    """The store named by `MEMLM_STORE`, else `fallback` (the local SQLite file)."""
    return os.environ.get(STORE_ENV) or fallback


def redact(location: Any) -> str:
    """A store's URL without its password (for logs and saved state)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(location))


__all__ = ["STORE_ENV", "FactBackend", "default_store", "open_fact_store", "redact", "register_backend", "scheme_of"]
