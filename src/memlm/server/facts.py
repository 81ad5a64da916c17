"""The one place where the server's memory routes and MCP tools meet `memlm.Memory`.

The HTTP API and the MCP tools speak mem0's vocabulary (`user_id`, `agent_id`, `run_id`, `metadata`,
`filters`, `limit`/`top_k`, `threshold`), and so does `memlm.Memory` (`memlm.facts.api`): scopes and
metadata are columns of the fact store and filters are compiled by `memlm.facts.filters`, so a
memory added through the server and one added through the library are the same row, filtered the
same way. `FactsAdapter` adds only what a server needs on top: the user a call acts for (resolved by
the caller from the API key), pagination and order for listings, a lock, and the item shape of the
responses.

Servers before this one kept `agent_id`, `run_id` and `metadata` in a table of their own database
(`<home>/server.sqlite`, `fact_scopes`); the metadata found there is copied into the fact store
once, when the adapter opens (agent_id and run_id of those old memories are not: the store records
them only when a memory is added).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError
from memlm.facts.api import FactMemory
from memlm.facts.filters import compile_filters
from memlm.facts.records import DuplicateFactError, FactNotFoundError
from memlm.paths import check_name

MAX_METADATA_BYTES = 16_384
ORDERS = {"recent": lambda item: (-item["last_used"], item["id"]), "id": lambda item: item["id"],
          "importance": lambda item: (-item["importance"], item["id"])}

__all__ = ["FactsAdapter", "compile_filters", "check_metadata"]


def check_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ConfigError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    if len(encoded.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ConfigError(f"metadata is too large ({len(encoded):,} characters; limit {MAX_METADATA_BYTES:,} bytes)")
    return metadata


def _item(memory: dict[str, Any], user: str) -> dict[str, Any]:
    """A `Memory` result as the server returns it: mem0's keys, the user it acts for, memlm's extras."""
    return {**memory, "user_id": user, "created": memory.get("created")}


class FactsAdapter:
    """mem0-style operations on a `memlm.Memory`, scoped to one user per call (the caller resolves who).

    Thread-safe: calls are serialised by a lock (each takes milliseconds), since the fact store's
    transactions share one SQLite connection.
    """

    def __init__(self, memory: FactMemory, server_db: str | os.PathLike | None = None):
        self.memory = memory
        self._lock = threading.RLock()
        if server_db is not None:
            self._adopt_old_metadata(Path(server_db))

    def close(self) -> None:
        self.memory.close()

    def _adopt_old_metadata(self, path: Path) -> None:
        """Copy the metadata an older server kept in `fact_scopes` into the fact store, once."""
        if not path.exists():
            return
        try:
            with sqlite3.connect(path) as old:
                if old.execute("SELECT 1 FROM sqlite_master WHERE name = 'fact_scopes'").fetchone() is None:
                    return
                rows = old.execute("SELECT fact_id, user, metadata FROM fact_scopes WHERE metadata IS NOT NULL")
                pending = [(fact_id, user, json.loads(metadata)) for fact_id, user, metadata in rows]
                for fact_id, user, metadata in pending:
                    try:
                        fact = self.memory.store.get(fact_id, user=user)
                    except FactNotFoundError:
                        continue
                    if not fact.metadata and metadata:
                        self.memory.store.update(fact_id, user, metadata=metadata, actor="server-migration")
                old.execute("DROP TABLE fact_scopes")
        except (sqlite3.Error, ValueError) as error:
            raise ConfigError(f"could not read the old memory scopes in {path}: {error}") from error

    # --- operations -------------------------------------------------------------------------
    def add(self, user: str, messages: Any, *, agent_id: str | None = None, run_id: str | None = None,
            metadata: dict[str, Any] | None = None, infer: bool = True, category: str | None = None
            ) -> list[dict[str, Any]]:
        """Remember what `messages` say (rules extract facts; `infer=False` stores each text as it is).
        Returns one entry per candidate: {"id", "memory", "event": "ADD" | "UPDATE" | "NONE", "reason", ...}."""
        check_name(user, "user_id")
        metadata = check_metadata(metadata)
        if category is not None and (not isinstance(category, str) or not 0 < len(category) <= 64):
            raise ConfigError("category must be a string of 1-64 characters")
        with self._lock:
            results = self.memory.add(messages, user_id=user, agent_id=agent_id, run_id=run_id, metadata=metadata,
                                      infer=infer, category=category)["results"]
            out = []
            for result in results:
                fact = self.memory.store.get(result["id"], user=user) if result["id"] is not None else None
                out.append({**result, "user_id": user, "agent_id": fact.agent_id if fact else None,
                            "run_id": fact.run_id if fact else None, "metadata": (fact.metadata or {}) if fact else {}})
        return out

    def search(self, user: str, query: str, *, limit: int = 5, agent_id: str | None = None,
               run_id: str | None = None, filters: Any = None, threshold: float | None = None
               ) -> list[dict[str, Any]]:
        """The user's memories ranked for `query` (hybrid relevance blended with importance), filtered."""
        check_name(user, "user_id")
        with self._lock:
            found = self.memory.search(query, user_id=user, agent_id=agent_id, run_id=run_id,
                                       filters=_without_user(filters), top_k=limit,
                                       threshold=-1.0 if threshold is None else threshold)["results"]
        return [_item(memory, user) for memory in found]

    def get_all(self, user: str, *, limit: int = 100, offset: int = 0, agent_id: str | None = None,
                run_id: str | None = None, filters: Any = None, order: str = "recent") -> list[dict[str, Any]]:
        return self._listing(user, agent_id, run_id, filters, order)[offset:offset + limit]

    def count(self, user: str, *, agent_id: str | None = None, run_id: str | None = None, filters: Any = None) -> int:
        """How many live memories a listing with the same scope and filters holds in all."""
        return len(self._listing(user, agent_id, run_id, filters, "id"))

    def _listing(self, user: str, agent_id: str | None, run_id: str | None, filters: Any,
                 order: str) -> list[dict[str, Any]]:
        check_name(user, "user_id")
        if order not in ORDERS:
            raise ConfigError(f"order must be recent, id or importance, got {order!r}")
        with self._lock:
            memories = self.memory.get_all(user_id=user, agent_id=agent_id, run_id=run_id,
                                           filters=_without_user(filters))["results"]
        return sorted((_item(memory, user) for memory in memories), key=ORDERS[order])

    def get(self, user: str, memory_id: int) -> dict[str, Any]:
        with self._lock:
            return _item(self.memory.get(memory_id, user_id=user), user)

    def update(self, user: str, memory_id: int, text: str | None = None,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        metadata = check_metadata(metadata)
        if text is None and metadata is None:
            raise ConfigError("give the new text, new metadata or both")
        with self._lock:
            try:
                updated = self.memory.update(memory_id, text, user_id=user, metadata=metadata)
            except sqlite3.IntegrityError:
                raise DuplicateFactError("another memory of this user already has this text") from None
            updated.pop("message", None)
            return _item(updated, user)

    def delete(self, user: str, memory_id: int) -> None:
        with self._lock:
            self.memory.delete(memory_id, user_id=user)  # FactNotFoundError (404) for another user's id

    def delete_all(self, user: str, *, agent_id: str | None = None, run_id: str | None = None,
                   filters: Any = None) -> int:
        with self._lock:
            if not filters:
                return self.memory.delete_all(user_id=user, agent_id=agent_id, run_id=run_id)["deleted"]
            ids = [item["id"] for item in self._listing(user, agent_id, run_id, filters, "id")]
            return self.memory.store.delete(ids, user, actor="api")

    def history(self, user: str, memory_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.memory.history(memory_id, user_id=user)

    def users(self) -> list[str]:
        with self._lock:
            return self.memory.users()


def _without_user(filters: Any) -> Any:
    """The caller already resolved the user (from the key); a `user_id` left in the filters is that user."""
    if isinstance(filters, dict) and "user_id" in filters:
        return {key: value for key, value in filters.items() if key != "user_id"}
    return filters



