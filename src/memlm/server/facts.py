"""The one place where mem0-style requests meet memlm's `FactMemory`.

The HTTP API and the MCP tools speak mem0's vocabulary (`user_id`, `agent_id`, `run_id`, `metadata`,
`filters`, `limit`/`top_k`, `threshold`); `FactMemory` today knows users only. `FactsAdapter` maps one
to the other:

* `user_id` -> `FactMemory`'s `user` (the isolation boundary, enforced in SQL by the fact store);
* `agent_id`, `run_id` and `metadata` are kept beside each fact in a small table of the server's own
  database (`<home>/server.sqlite`, `fact_scopes`), keyed by fact id and user, and applied as filters
  after the store's per-user search (which is asked for more candidates when a filter is set);
* `filters` are evaluated here (see `compile_filters`).

When `FactMemory` learns these parameters itself, only this module changes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError
from memlm.facts.api import FactMemory
from memlm.facts.store import DuplicateFactError, UnknownUserError, check_text
from memlm.paths import check_name
from memlm.store.sqlite import connect, transaction

MAX_METADATA_BYTES = 16_384
SCOPE_FIELDS = ("agent_id", "run_id")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fact_scopes (
    fact_id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    agent_id TEXT,
    run_id TEXT,
    metadata TEXT                   -- JSON object or NULL
);
CREATE INDEX IF NOT EXISTS fact_scopes_user ON fact_scopes (user);
"""

Predicate = Callable[[dict[str, Any]], bool]
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "in": lambda a, b: a in b,
    "nin": lambda a, b: a not in b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "contains": lambda a, b: isinstance(a, str) and str(b) in a,
    "icontains": lambda a, b: isinstance(a, str) and str(b).casefold() in a.casefold(),
}
_ITEM_FIELDS = ("user_id", "agent_id", "run_id", "category", "memory", "created_at", "updated_at")


def check_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ConfigError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    if len(encoded.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ConfigError(f"metadata is too large ({len(encoded):,} characters; limit {MAX_METADATA_BYTES:,} bytes)")
    return metadata


def compile_filters(filters: Any) -> Predicate | None:
    """mem0-style filters -> a predicate over memory items.

    Supported: `{"field": value}` (equality), `{"field": {"op": value}}` with op in eq, ne, in, nin,
    gt, gte, lt, lte, contains, icontains; `{"AND": [...]}`, `{"OR": [...]}`, `{"NOT": {...}}`; fields
    user_id, agent_id, run_id, category, memory, created_at (Unix seconds), updated_at, `metadata`
    (`{"metadata": {"key": value}}`) and any other name, read as a metadata key. Anything else is a
    `ConfigError` naming what is not supported.
    """
    if filters is None or filters == {}:
        return None
    if not isinstance(filters, dict):
        raise ConfigError(f"filters must be a JSON object, got {type(filters).__name__}")
    clauses: list[Predicate] = []
    for key, value in filters.items():
        if key in ("AND", "OR"):
            if not isinstance(value, list) or not value:
                raise ConfigError(f"filters: {key} takes a non-empty list of filters")
            parts = [compile_filters(part) or (lambda _item: True) for part in value]
            clauses.append((lambda ps: lambda item: all(p(item) for p in ps))(parts) if key == "AND"
                           else (lambda ps: lambda item: any(p(item) for p in ps))(parts))
        elif key == "NOT":
            inner = compile_filters(value) or (lambda _item: True)
            clauses.append(lambda item, inner=inner: not inner(item))
        elif key == "metadata":
            if not isinstance(value, dict):
                raise ConfigError("filters: metadata takes an object of metadata keys")
            clauses.extend(_field_clause(("metadata", name), condition) for name, condition in value.items())
        else:
            path = (key,) if key in _ITEM_FIELDS else ("metadata", key)
            clauses.append(_field_clause(path, value))
    return lambda item: all(clause(item) for clause in clauses)


def _field_clause(path: tuple[str, ...], condition: Any) -> Predicate:
    def read(item: dict[str, Any]) -> Any:
        value: Any = item
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    if isinstance(condition, dict):
        if not condition:
            raise ConfigError(f"filters: empty condition for {'.'.join(path)}")
        checks = []
        for op, operand in condition.items():
            if op not in _OPERATORS:
                raise ConfigError(f"filters: unsupported operator {op!r} (use one of {', '.join(_OPERATORS)})")
            if op in ("in", "nin") and not isinstance(operand, list):
                raise ConfigError(f"filters: {op} takes a list")
            checks.append((_OPERATORS[op], operand))

        def test(item: dict[str, Any]) -> bool:
            value = read(item)
            try:
                return all(fn(value, operand) for fn, operand in checks)
            except TypeError:  # e.g. "gt" between a number and a string: no match, not an error
                return False

        return test
    return lambda item: read(item) == condition


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


class FactsAdapter:
    """mem0-style operations on a `FactMemory`, scoped to one user per call (the caller resolves who).

    Thread-safe: calls are serialised by a lock (each takes milliseconds), since the fact store's
    transactions share one SQLite connection.
    """

    def __init__(self, memory: FactMemory, server_db: str | os.PathLike):
        self.memory = memory
        self.path = Path(server_db)
        self.db = connect(self.path, _SCHEMA, 1)
        self._lock = threading.RLock()

    def close(self) -> None:
        self.db.close()
        self.memory.close()

    # --- scopes -----------------------------------------------------------------------------
    def _scopes(self, user: str, ids: Iterable[int]) -> dict[int, tuple[str | None, str | None, dict | None]]:
        ids = list(ids)
        found: dict[int, tuple[str | None, str | None, dict | None]] = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute("SELECT fact_id, agent_id, run_id, metadata FROM fact_scopes "
                                   f"WHERE user = ? AND fact_id IN ({marks})", [user, *chunk])
            for fact_id, agent, run, metadata in rows:
                found[fact_id] = (agent, run, json.loads(metadata) if metadata else None)
        return found

    def _set_scope(self, fact_id: int, user: str, agent_id: str | None, run_id: str | None,
                   metadata: dict[str, Any] | None) -> None:
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO fact_scopes (fact_id, user, agent_id, run_id, metadata) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (fact_id, user, agent_id, run_id, json.dumps(metadata) if metadata else None))

    def _item(self, fact: dict[str, Any], user: str, scope: tuple | None) -> dict[str, Any]:
        agent, run, metadata = scope or (None, None, None)
        item = {"id": fact["id"], "memory": fact["memory"], "user_id": user, "agent_id": agent, "run_id": run,
                "metadata": metadata or {}, "category": fact.get("category"),
                "importance": fact.get("importance"), "use_count": fact.get("use_count"),
                "created_at": _iso(fact.get("created")), "updated_at": _iso(fact.get("last_used")),
                "created": fact.get("created"), "source": fact.get("source")}
        for key in ("score", "similarity"):
            if key in fact:
                item[key] = fact[key]
        return item

    def _items(self, user: str, facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scopes = self._scopes(user, [f["id"] for f in facts])
        return [self._item(fact, user, scopes.get(fact["id"])) for fact in facts]

    @staticmethod
    def _where(agent_id: str | None, run_id: str | None, filters: Any) -> Predicate | None:
        predicate = compile_filters(filters)
        wanted = {name: value for name, value in (("agent_id", agent_id), ("run_id", run_id)) if value is not None}
        if not wanted:
            return predicate
        return lambda item: all(item.get(k) == v for k, v in wanted.items()) and (predicate is None or predicate(item))

    # --- operations -------------------------------------------------------------------------
    def add(self, user: str, messages: Any, *, agent_id: str | None = None, run_id: str | None = None,
            metadata: dict[str, Any] | None = None, infer: bool = True, category: str | None = None
            ) -> list[dict[str, Any]]:
        """Remember what `messages` say (rules extract facts; `infer=False` stores each text as it is).
        Returns one entry per candidate: {"id", "memory", "event": "ADD" | "NONE", "reason", ...}."""
        check_name(user, "user_id")
        for name, value in (("agent_id", agent_id), ("run_id", run_id)):
            if value is not None:
                check_name(value, name)
        metadata = check_metadata(metadata)
        if category is not None and (not isinstance(category, str) or not 0 < len(category) <= 64):
            raise ConfigError("category must be a string of 1-64 characters")
        with self._lock:
            results = self.memory.add(messages, user=user, category=category, infer=infer)["results"]
            for result in results:
                if result["event"] in ("ADD", "UPDATE") and result["id"] is not None:
                    self._set_scope(result["id"], user, agent_id, run_id, metadata)
            scopes = self._scopes(user, [r["id"] for r in results if r["id"] is not None])
        out = []
        for result in results:
            agent, run, meta = scopes.get(result["id"], (None, None, None))
            out.append({**result, "user_id": user, "agent_id": agent, "run_id": run, "metadata": meta or {}})
        return out

    def search(self, user: str, query: str, *, limit: int = 5, agent_id: str | None = None,
               run_id: str | None = None, filters: Any = None, threshold: float | None = None
               ) -> list[dict[str, Any]]:
        """The user's memories ranked for `query` (similarity blended with importance), filtered."""
        check_name(user, "user_id")
        where = self._where(agent_id, run_id, filters)
        with self._lock:
            if not self.memory.store.has_user(user):
                check_text(query, "query")  # nothing to search, but a bad query is still a bad request
                return []
            # Filters apply after the per-user search: ask for more candidates so enough survive.
            k = limit if where is None else max(10 * limit, 200)
            hits = self.memory.search(query, user=user, limit=k,
                                      min_similarity=-1.0 if threshold is None else threshold)["results"]
            items = self._items(user, hits)
        if where is not None:
            items = [item for item in items if where(item)]
        return items[:limit]

    def get_all(self, user: str, *, limit: int = 100, offset: int = 0, agent_id: str | None = None,
                run_id: str | None = None, filters: Any = None, order: str = "recent") -> list[dict[str, Any]]:
        check_name(user, "user_id")
        if order not in ("recent", "id", "importance"):
            raise ConfigError(f"order must be recent, id or importance, got {order!r}")
        where = self._where(agent_id, run_id, filters)
        with self._lock:
            if not self.memory.store.has_user(user):
                return []
            if where is None:
                facts = self.memory.store.facts(user, limit=limit, offset=offset, order=order)
                return self._items(user, [_fact(f) for f in facts])
            items = self._items(user, [_fact(f) for f in self.memory.store.facts(user, order=order)])
        return [item for item in items if where(item)][offset:offset + limit]

    def count(self, user: str) -> int:
        with self._lock:
            return self.memory.store.count(check_name(user, "user_id"))

    def get(self, user: str, memory_id: int) -> dict[str, Any]:
        with self._lock:
            fact = self.memory.get(memory_id, user=user)
            return self._items(user, [fact])[0]

    def update(self, user: str, memory_id: int, text: str | None = None,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        metadata = check_metadata(metadata)
        if text is None and metadata is None:
            raise ConfigError("give the new text, new metadata or both")
        with self._lock:
            fact = self.memory.get(memory_id, user=user)  # 404 before anything changes
            if text is not None:
                try:
                    fact = self.memory.update(memory_id, text, user=user)
                except sqlite3.IntegrityError:
                    raise DuplicateFactError("another memory of this user already has this text") from None
            if metadata is not None:
                agent, run, _ = self._scopes(user, [memory_id]).get(memory_id, (None, None, None))
                self._set_scope(memory_id, user, agent, run, metadata)
            return self._items(user, [fact])[0]

    def delete(self, user: str, memory_id: int) -> None:
        with self._lock:
            self.memory.delete(memory_id, user=user)  # FactNotFoundError (404) for another user's id
            with transaction(self.db):
                self.db.execute("DELETE FROM fact_scopes WHERE fact_id = ? AND user = ?", (memory_id, user))

    def delete_all(self, user: str, *, agent_id: str | None = None, run_id: str | None = None,
                   filters: Any = None) -> int:
        where = self._where(agent_id, run_id, filters)
        with self._lock:
            try:
                if where is None:
                    deleted = self.memory.delete_all(user=user)["deleted"]
                    ids = None
                else:
                    items = self._items(user, [_fact(f) for f in self.memory.store.facts(user)])
                    ids = [item["id"] for item in items if where(item)]
                    deleted = self.memory.store.delete(ids, user, actor="api")
            except UnknownUserError:
                return 0
            with transaction(self.db):
                if ids is None:
                    self.db.execute("DELETE FROM fact_scopes WHERE user = ?", (user,))
                else:
                    self.db.executemany("DELETE FROM fact_scopes WHERE fact_id = ? AND user = ?",
                                        [(i, user) for i in ids])
        return deleted

    def history(self, user: str, memory_id: int) -> list[dict[str, Any]]:
        with self._lock:
            changes = self.memory.history(memory_id, user=user)
        return [{**change, "created_at": _iso(change.get("time"))} for change in changes]

    def users(self) -> list[str]:
        with self._lock:
            return self.memory.users()


def _fact(fact: Any) -> dict[str, Any]:
    values = fact.to_dict()
    values["memory"] = values.pop("text")
    return values

