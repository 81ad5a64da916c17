"""Provenance records in SQLite: one row per stored memory item.

Each row tells where a memory came from: user, session, sequence (one `memorize()`/`generate()`
stream), batch row, position of its first token, the token, how many tokens it spans, the source
text span, when it was written, and which layer's memory holds it.

Crash safety works with generations (see `KeyValueStore`): a row written since the last save
carries `generation = committed + 1`; a row deleted since the last save carries `deleted_at`.
Committing a save is one transaction that bumps `meta.generation`, drops deleted rows and clears
the marks; opening a store rolls back whatever a killed process left uncommitted. The database
runs in WAL mode, so readers (e.g. `memlm memory list`) never block a writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memlm.store.sqlite import connect, copy_database, get_meta, set_meta, transaction

SCHEMA_VERSION = 1
COLUMNS = ("id", "kind", "layer", "user", "session", "sequence", "row", "position", "token", "length",
           "text", "created", "context")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,             -- 'attention' (kNN attention) or 'lm' (kNN-LM)
    layer INTEGER NOT NULL,         -- decoder layer; -1 for kNN-LM
    user TEXT,
    session TEXT,
    sequence INTEGER NOT NULL,      -- one memorize()/generate() stream
    row INTEGER NOT NULL,           -- batch row: the memory partition it lives in
    position INTEGER NOT NULL,      -- position of the span's first token in its stream
    token INTEGER NOT NULL,         -- first token of the span (kNN-LM: the next token)
    length INTEGER NOT NULL,        -- tokens in the span
    text TEXT NOT NULL,             -- the source text span
    created REAL NOT NULL,          -- unix time
    context TEXT NOT NULL,          -- the span with the text just before it (what text search matches)
    generation INTEGER NOT NULL,    -- save generation that first held this row
    deleted_at INTEGER              -- generation that deletes it (NULL: live)
);
CREATE INDEX IF NOT EXISTS records_session ON records (session);
CREATE INDEX IF NOT EXISTS records_sequence ON records (sequence);
CREATE INDEX IF NOT EXISTS records_group ON records (kind, row, layer);
"""


@dataclass
class Record:
    id: int
    kind: str
    layer: int
    user: str | None
    session: str | None
    sequence: int
    row: int
    position: int
    token: int
    length: int
    text: str
    created: float
    context: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecordFilter:
    """Which records an operation applies to; unset fields match everything."""

    ids: list[int] | None = None
    user: str | None = None
    session: str | None = None
    sequence: int | None = None
    text: str | None = None  # substring of the span or its context, case-insensitive
    kind: str | None = None
    layer: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["deleted_at IS NULL"], []
        if self.ids is not None:
            clauses.append(f"id IN ({','.join('?' * len(self.ids))})" if self.ids else "0")
            params.extend(int(i) for i in self.ids)
        for column in ("user", "session", "sequence", "kind", "layer"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.text is not None:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(text LIKE ? ESCAPE '\\' OR context LIKE ? ESCAPE '\\')")
            params.extend([f"%{escaped}%"] * 2)
        return " AND ".join(clauses), params


class RecordStore:
    """SQLite table of records; `path=None` keeps it in memory (a store never saved)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.connection = connect(self.path, _SCHEMA, SCHEMA_VERSION)

    def close(self) -> None:
        self.connection.close()

    # --- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        return get_meta(self.connection, key)

    def set_meta(self, key: str, value: Any) -> None:
        set_meta(self.connection, key, value)

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    # --- writing -----------------------------------------------------------------------------
    def next_id(self) -> int:
        row = self.connection.execute("SELECT MAX(id) FROM records").fetchone()
        return int(row[0] or 0) + 1

    def insert(self, records: Iterable[Record]) -> None:
        """Insert rows as uncommitted (generation = committed + 1), in one transaction."""
        pending = self.generation + 1
        rows = [(r.id, r.kind, r.layer, r.user, r.session, r.sequence, r.row, r.position, r.token, r.length,
                 r.text, r.created, r.context or r.text, pending) for r in records]
        with self.transaction():
            self.connection.executemany(
                "INSERT INTO records (id, kind, layer, user, session, sequence, row, position, token, length, "
                "text, created, context, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def mark_deleted(self, ids: Iterable[int]) -> None:
        pending = self.generation + 1
        with self.transaction():
            self.connection.executemany("UPDATE records SET deleted_at = ? WHERE id = ?",
                                        [(pending, int(i)) for i in ids])

    def commit_generation(self, generation: int, extra_meta: dict[str, Any] | None = None) -> None:
        """The commit point of a save: everything written since the last save becomes durable."""
        with self.transaction():
            self.connection.execute("DELETE FROM records WHERE deleted_at IS NOT NULL")
            self.set_meta("generation", generation)
            for key, value in (extra_meta or {}).items():
                self.set_meta(key, value)

    def roll_back_uncommitted(self) -> int:
        """Undo rows and deletions written after the last committed save; return rows dropped."""
        committed = self.generation
        with self.transaction():
            dropped = self.connection.execute("DELETE FROM records WHERE generation > ?", (committed,)).rowcount
            self.connection.execute("UPDATE records SET deleted_at = NULL WHERE deleted_at IS NOT NULL")
        return dropped

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.connection)

    def copy_to(self, path: Path) -> None:
        """Write a consistent copy of the whole database to `path` (SQLite's online backup)."""
        copy_database(self.connection, path)

    def select(self, where: RecordFilter | None = None, limit: int | None = None, offset: int = 0,
               newest_first: bool = False) -> list[Record]:
        clause, params = (where or RecordFilter()).where()
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {', '.join(COLUMNS)} FROM records WHERE {clause} ORDER BY id {order}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params = [*params, int(limit), int(offset)]
        return [Record(*row) for row in self.connection.execute(sql, params)]

    def iterate(self, where: RecordFilter | None = None, batch: int = 10_000) -> Iterator[Record]:
        clause, params = (where or RecordFilter()).where()
        cursor = self.connection.execute(f"SELECT {', '.join(COLUMNS)} FROM records WHERE {clause} ORDER BY id",
                                         params)
        while rows := cursor.fetchmany(batch):
            yield from (Record(*row) for row in rows)

    def ids(self, where: RecordFilter | None = None) -> list[int]:
        clause, params = (where or RecordFilter()).where()
        return [row[0] for row in self.connection.execute(f"SELECT id FROM records WHERE {clause}", params)]

    def count(self, where: RecordFilter | None = None) -> int:
        clause, params = (where or RecordFilter()).where()
        return int(self.connection.execute(f"SELECT COUNT(*) FROM records WHERE {clause}", params).fetchone()[0])

    def stats(self) -> dict[str, Any]:
        clause, params = RecordFilter().where()
        rows = self.connection.execute(
            f"SELECT kind, layer, session, COUNT(*), MIN(created), MAX(created) FROM records WHERE {clause} "
            "GROUP BY kind, layer, session ORDER BY kind, layer, session", params).fetchall()
        return {
            "records": self.count(),
            "groups": [{"kind": k, "layer": layer, "session": s, "records": n, "oldest": _iso(lo), "newest": _iso(hi)}
                       for k, layer, s, n, lo, hi in rows],
        }

    def export_jsonl(self, path: str | os.PathLike, where: RecordFilter | None = None) -> int:
        """Write matching records as JSON lines (atomically); return how many."""
        from memlm.serialization import atomic_write_bytes

        lines = [json.dumps(record.to_dict(), ensure_ascii=False) for record in self.iterate(where)]
        atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        return len(lines)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
