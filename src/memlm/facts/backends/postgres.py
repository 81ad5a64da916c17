"""PostgreSQL + pgvector: the fact store of several servers (psycopg 3; the same SQL runs on any
PostgreSQL with the `vector` extension, managed or sharded by user).

The rows and their semantics are those of the SQLite store (`memlm.facts.store`); the tables are
prefixed `memlm_` and the owner column is `owner` (`user` is reserved in PostgreSQL). Vector search
runs in the database: the user's live facts ordered by inner product (`<#>`), an exact scan of that
user's rows (a user holds thousands of facts; an approximate index filtered by user could miss one).
The BM25 index is kept in each process, brought up to date from `memlm_history` like the SQLite
store's. Writes of one user are serialised by a transaction-level advisory lock on the user, so the
history ids of a user commit in order (the lexical sync relies on it) and two servers adding the
same text at once keep one copy.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from memlm.errors import ConfigError, IncompatibleMemoryError
from memlm.facts.backends import redact, register_backend
from memlm.facts.backends.base import FactBackend
from memlm.facts.lexical import LexicalIndex
from memlm.facts.records import (
    ACTIVE,
    MAX_SOURCE_CHARS,
    SUPERSEDED,
    DuplicateFactError,
    Fact,
    FactChange,
    FactNotFoundError,
    _check_metadata,
    _check_time,
    _metadata_json,
    check_id,
    check_text,
    search_text,
    text_key,
)
from memlm.paths import check_name

SCHEMA_VERSION = 2
_SCHEMA_LOCK = 0x6D656D6C6D  # "memlm": one process creates the tables at a time
_SCHEMA = """
CREATE TABLE IF NOT EXISTS memlm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memlm_users (owner TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS memlm_facts (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    category TEXT,
    text TEXT NOT NULL,
    text_key TEXT NOT NULL,
    embedding vector({dimension}) NOT NULL,
    latent BYTEA,
    importance DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION NOT NULL,
    use_count INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    session TEXT,
    batch_row INTEGER,
    spoken TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    superseded_by BIGINT,
    expires_at DOUBLE PRECISION,
    updated DOUBLE PRECISION,
    metadata TEXT,
    agent_id TEXT,
    run_id TEXT,
    slot TEXT,
    context TEXT
);
ALTER TABLE memlm_facts ADD COLUMN IF NOT EXISTS context TEXT;
CREATE INDEX IF NOT EXISTS memlm_facts_owner ON memlm_facts (owner, id);
CREATE UNIQUE INDEX IF NOT EXISTS memlm_facts_owner_key_active ON memlm_facts (owner, text_key, COALESCE(batch_row, -1))
    WHERE status = 'active';
CREATE INDEX IF NOT EXISTS memlm_facts_owner_slot ON memlm_facts (owner, slot) WHERE slot IS NOT NULL;
CREATE INDEX IF NOT EXISTS memlm_facts_owner_run ON memlm_facts (owner, run_id, id) WHERE run_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS memlm_history (
    id BIGSERIAL PRIMARY KEY,
    fact_id BIGINT NOT NULL,
    owner TEXT NOT NULL,
    action TEXT NOT NULL,
    old_text TEXT,
    new_text TEXT,
    actor TEXT,
    time DOUBLE PRECISION NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS memlm_history_owner ON memlm_history (owner, id);
CREATE INDEX IF NOT EXISTS memlm_history_fact ON memlm_history (fact_id);
"""
_COLUMNS = ("id, owner, category, text, importance, created, last_used, use_count, source, session, batch_row, "
            "spoken, status, superseded_by, expires_at, updated, metadata, agent_id, run_id, slot, context")
_LIVE = "status = 'active' AND (expires_at IS NULL OR expires_at > %s)"


class PostgresFactStore(FactBackend):
    """Facts of many users in one PostgreSQL database (`url`: a libpq URL), searched per user."""

    def __init__(self, url: str, dimension: int, encoder: str, clock: Callable[[], float] = time.time):
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError as error:
            raise ConfigError("the postgres store needs `pip install memlm[postgres]` (psycopg, pgvector)") from error
        self.url, self.path = url, None
        self.dimension, self.encoder, self.clock = dimension, encoder, clock
        self._errors = psycopg.errors
        try:
            self.connection = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as error:
            raise ConfigError(f"cannot reach the PostgreSQL store {redact(url)}: {error}") from error
        self._lock = threading.RLock()
        self._lexical: dict[str, tuple[LexicalIndex, int]] = {}
        with self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self.connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self.connection)
        with self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in filter(str.strip, _SCHEMA.format(dimension=int(dimension)).split(";")):
                self.connection.execute(statement)
            self.connection.execute("INSERT INTO memlm_meta (key, value) VALUES ('schema_version', %s), "
                                    "('encoder', %s) ON CONFLICT (key) DO NOTHING",
                                    (json.dumps(SCHEMA_VERSION), json.dumps({"name": encoder, "dimension": dimension})))
        saved = json.loads(self._one("SELECT value FROM memlm_meta WHERE key = 'encoder'")[0])
        if saved != {"name": encoder, "dimension": dimension}:
            self.close()
            raise IncompatibleMemoryError(
                f"{redact(url)} holds facts embedded by {saved.get('name')} ({saved.get('dimension')}-d), "
                f"but this bank uses {encoder} ({dimension}-d); open it with the same encoder")

    def _one(self, sql: str, params: Any = ()) -> Any:
        with self._lock:
            return self.connection.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Any = ()) -> list[Any]:
        with self._lock:
            return self.connection.execute(sql, params).fetchall()

    def _lock_user(self, user: str) -> None:
        """Serialise this transaction with every other write of `user` (any process)."""
        self.connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user,))

    def _begin_writing(self, user: str, now: float) -> None:
        """In an adding transaction: hold `user`'s lock and make sure the user exists."""
        self._lock_user(user)
        self.connection.execute("INSERT INTO memlm_users (owner, created) VALUES (%s, %s) "
                                "ON CONFLICT (owner) DO NOTHING", (user, now))

    def close(self) -> None:
        self.connection.close()

    # --- users -------------------------------------------------------------------------------
    def users(self) -> list[str]:
        return [row[0] for row in self._all("SELECT owner FROM memlm_users ORDER BY owner")]

    def has_user(self, user: str) -> bool:
        check_name(user, "user id")
        return self._one("SELECT 1 FROM memlm_users WHERE owner = %s", (user,)) is not None

    def latest_in_run(self, user: str, run_id: str) -> Fact | None:
        found = self._one(f"SELECT {_COLUMNS} FROM memlm_facts WHERE owner = %s AND run_id = %s ORDER BY id DESC "
                          "LIMIT 1", (user, run_id))
        return None if found is None else Fact(*found)

    def scope_in_other_owners(self, field: str, value: str, owner: str) -> bool:
        if field not in ("agent_id", "run_id"):
            raise ConfigError(f"no scope field {field!r}")
        return self._one(f"SELECT 1 FROM memlm_facts WHERE {field} = %s AND owner != %s LIMIT 1",
                         (value, owner)) is not None

    # --- writing -----------------------------------------------------------------------------
    def add(self, user: str, text: str, embedding: np.ndarray, *, importance: float, category: str | None = None,
            source: str | None = None, session: str | None = None, row: int | None = None,
            latent: np.ndarray | None = None, actor: str | None = None, spoken: str | None = None,
            expires_at: float | None = None, metadata: dict[str, Any] | None = None,
            agent_id: str | None = None, run_id: str | None = None, supersedes: Iterable[int] = (),
            reason: str | None = None, slot: str | None = None, context: str | None = None) -> Fact:
        check_name(user, "user id")
        text = check_text(text)
        if source is not None:
            source = check_text(source, "source", MAX_SOURCE_CHARS)
        if spoken is not None:
            spoken = check_text(spoken, "sentence")
        if context is not None:
            context = check_text(context, "context", MAX_SOURCE_CHARS)
        embedding = self._check_vector(embedding)
        expires_at = _check_time(expires_at, "expires_at")
        metadata_json = _metadata_json(metadata)
        now = self.clock()
        with self._lock:
            try:
                with self.connection.transaction():
                    self._begin_writing(user, now)
                    fact_id = int(self.connection.execute(
                        "INSERT INTO memlm_facts (owner, category, text, text_key, embedding, latent, importance, "
                        "created, last_used, source, session, batch_row, spoken, expires_at, updated, metadata, "
                        "agent_id, run_id, slot, context) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                        "%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (user, category, text, text_key(text), embedding, _bytes(latent), float(importance), now,
                         now, source, session, row, spoken, expires_at, now, metadata_json, agent_id, run_id,
                         slot, context)).fetchone()[0])
                    self._log(fact_id, user, "add", None, text, actor, now, reason)
                    for old_id in supersedes:
                        self._supersede(int(old_id), fact_id, text, user, actor, now, reason)
            except self._errors.UniqueViolation:
                raise DuplicateFactError(f"an identical fact is already stored for user {user!r}") from None
        return self.get(fact_id, user=user)

    def add_many(self, user: str, texts: list[str], embeddings: np.ndarray, *, importance: float = 1.0,
                 actor: str | None = None) -> list[int]:
        """Insert many plain facts of one user and their history in one transaction (all or none)."""
        check_name(user, "user id")
        texts = [check_text(text) for text in texts]
        vectors = [self._check_vector(vector) for vector in embeddings]
        if len(vectors) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(vectors)} embeddings")
        if not texts:
            return []
        from pgvector import Vector

        now = self.clock()
        with self._lock:
            try:
                with self.connection.transaction():
                    self._begin_writing(user, now)
                    ids = [int(row[0]) for row in self.connection.execute(
                        "INSERT INTO memlm_facts (owner, text, text_key, embedding, importance, created, last_used, "
                        "updated) SELECT %s, t, k, e, %s, %s, %s, %s "
                        "FROM unnest(%s::text[], %s::text[], %s::vector[]) WITH ORDINALITY AS u(t, k, e, n) "
                        "ORDER BY n RETURNING id",
                        (user, float(importance), now, now, now, texts, [text_key(t) for t in texts],
                         [Vector(v) for v in vectors])).fetchall()]
                    ids.sort()
                    self.connection.execute(
                        "INSERT INTO memlm_history (fact_id, owner, action, old_text, new_text, actor, time, reason) "
                        "SELECT f, %s, 'add', NULL, t, %s, %s, NULL FROM unnest(%s::bigint[], %s::text[]) AS u(f, t)",
                        (user, actor, now, ids, texts))
            except self._errors.UniqueViolation:
                raise DuplicateFactError(f"an identical fact is already stored for user {user!r}") from None
        return ids

    def _supersede(self, old_id: int, new_id: int, new_text: str, user: str, actor: str | None, now: float,
                   reason: str | None) -> None:
        found = self.connection.execute(
            "UPDATE memlm_facts SET status = %s, superseded_by = %s, updated = %s "
            "WHERE id = %s AND owner = %s AND status = 'active' RETURNING text",
            (SUPERSEDED, new_id, now, old_id, user)).fetchone()
        if found is not None:
            self._log(old_id, user, "supersede", found[0], new_text, actor, now,
                      f"superseded by fact {new_id}" + (f": {reason}" if reason else ""))

    def update(self, fact_id: int, user: str, text: str | None = None, embedding: np.ndarray | None = None, *,
               latent: np.ndarray | None = None, actor: str | None = None, metadata: dict[str, Any] | None = None,
               expires_at: float | None | type[Ellipsis] = ..., spoken: str | None = None,
               slot: str | None = None) -> Fact:
        old = self.get(fact_id, user=user)
        now = self.clock()
        assignments: dict[str, Any] = {"updated": now}
        if text is not None:
            text = check_text(text)
            if embedding is None:
                raise ConfigError("a new text needs its embedding")
            assignments.update(text=text, text_key=text_key(text), embedding=self._check_vector(embedding),
                               latent=_bytes(latent), last_used=now, spoken=spoken, slot=slot)
        if metadata is not None:
            assignments["metadata"] = _metadata_json({**(old.metadata or {}), **_check_metadata(metadata)})
        if expires_at is not ...:
            assignments["expires_at"] = _check_time(expires_at, "expires_at")
        with self._lock:
            try:
                with self.connection.transaction():
                    self._lock_user(user)
                    self.connection.execute(
                        f"UPDATE memlm_facts SET {', '.join(f'{name} = %s' for name in assignments)} "
                        "WHERE id = %s AND owner = %s", [*assignments.values(), fact_id, user])
                    self._log(fact_id, user, "update", old.text, text if text is not None else old.text, actor, now)
            except self._errors.UniqueViolation:
                raise DuplicateFactError(f"user {user!r} already has a fact with this text") from None
        return self.get(fact_id, user=user)

    def delete(self, fact_ids: Iterable[int], user: str, actor: str | None = None) -> int:
        check_name(user, "user id")
        now, deleted = self.clock(), 0
        with self._lock, self.connection.transaction():
            self._lock_user(user)
            for fact_id in fact_ids:
                found = self.connection.execute("DELETE FROM memlm_facts WHERE id = %s AND owner = %s RETURNING text",
                                                (int(fact_id), user)).fetchone()
                if found is not None:
                    self._log(int(fact_id), user, "delete", found[0], None, actor, now)
                    deleted += 1
        return deleted

    def touch(self, fact_ids: Iterable[int], user: str) -> None:
        now = self.clock()
        ids = [int(i) for i in fact_ids]
        if not ids:
            return
        # Under the user's lock like every write: two processes touching the same rows in different
        # orders would otherwise deadlock (measured: tests/facts/test_shared_store.py).
        with self._lock, self.connection.transaction():
            self._lock_user(user)
            self.connection.execute("UPDATE memlm_facts SET last_used = %s, use_count = use_count + 1 "
                                    "WHERE owner = %s AND id = ANY(%s)", (now, user, ids))

    def _log(self, fact_id: int, user: str, action: str, old_text: str | None, new_text: str | None,
             actor: str | None, now: float, reason: str | None = None) -> None:
        self.connection.execute(
            "INSERT INTO memlm_history (fact_id, owner, action, old_text, new_text, actor, time, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", (fact_id, user, action, old_text, new_text, actor, now, reason))

    # --- reading -----------------------------------------------------------------------------
    def get(self, fact_id: int, user: str | None = None) -> Fact:
        fact_id = check_id(fact_id)
        sql, params = f"SELECT {_COLUMNS} FROM memlm_facts WHERE id = %s", [fact_id]
        if user is not None:
            sql, params = sql + " AND owner = %s", [*params, check_name(user, "user id")]
        found = self._one(sql, params)
        if found is None:
            raise FactNotFoundError(f"no fact with id {fact_id}" + (f" for user {user!r}" if user else ""))
        return Fact(*found)

    def facts(self, user: str, category: str | None = None, limit: int | None = None, offset: int = 0,
              order: str = "id", include_inactive: bool = False) -> list[Fact]:
        orders = {"id": "id", "importance": "importance DESC, id", "recent": "last_used DESC, id"}
        sql, params = f"SELECT {_COLUMNS} FROM memlm_facts WHERE owner = %s", [user]
        if not include_inactive:
            sql, params = sql + f" AND {_LIVE}", [*params, self.clock()]
        if category is not None:
            sql, params = sql + " AND category = %s", [*params, category]
        sql += f" ORDER BY {orders[order]} LIMIT %s OFFSET %s"
        return [Fact(*found) for found in self._all(sql, [*params, limit, offset])]

    def count(self, user: str, include_inactive: bool = False) -> int:
        if include_inactive:
            return int(self._one("SELECT COUNT(*) FROM memlm_facts WHERE owner = %s", (user,))[0])
        return int(self._one(f"SELECT COUNT(*) FROM memlm_facts WHERE owner = %s AND {_LIVE}",
                             (user, self.clock()))[0])

    def slot_facts(self, user: str, slot: str, row: int | None = None) -> list[Fact]:
        return [Fact(*found) for found in self._all(
            f"SELECT {_COLUMNS} FROM memlm_facts WHERE owner = %s AND slot = %s AND batch_row IS NOT DISTINCT FROM %s "
            "AND status = 'active' ORDER BY id", (user, slot, row))]

    def find_duplicate(self, user: str, text: str, row: int | None = None) -> Fact | None:
        found = self._one(f"SELECT {_COLUMNS} FROM memlm_facts WHERE owner = %s AND text_key = %s "
                          "AND batch_row IS NOT DISTINCT FROM %s AND status = 'active'", (user, text_key(text), row))
        return None if found is None else Fact(*found)

    def history(self, fact_id: int, user: str | None = None) -> list[FactChange]:
        fact_id = check_id(fact_id)
        sql, params = ("SELECT id, fact_id, owner, action, old_text, new_text, actor, time, reason "
                       "FROM memlm_history WHERE fact_id = %s"), [fact_id]
        if user is not None:
            sql, params = sql + " AND owner = %s", [*params, user]
        changes = [FactChange(*found) for found in self._all(sql + " ORDER BY id", params)]
        if not changes:
            raise FactNotFoundError(f"no fact with id {fact_id}" + (f" for user {user!r}" if user else ""))
        return changes

    def latents(self, user: str) -> tuple[list[int], list[int | None], list[np.ndarray]]:
        ids, rows, vectors = [], [], []
        for fact_id, row, blob in self._all(
                f"SELECT id, batch_row, latent FROM memlm_facts WHERE owner = %s AND latent IS NOT NULL AND {_LIVE} "
                "ORDER BY id", (user, self.clock())):
            ids.append(fact_id)
            rows.append(row)
            vectors.append(np.frombuffer(bytes(blob), dtype=np.float32))
        return ids, rows, vectors

    def version(self, user: str | None = None) -> int:
        if user is None:
            return int(self._one("SELECT COALESCE(MAX(id), 0) FROM memlm_history")[0])
        return int(self._one("SELECT COALESCE(MAX(id), 0) FROM memlm_history WHERE owner = %s", (user,))[0])

    def embeddings(self, user: str, ids: list[int]) -> np.ndarray:
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        found = dict(self._all("SELECT id, embedding FROM memlm_facts WHERE owner = %s AND id = ANY(%s)",
                               (user, [int(i) for i in ids])))
        return np.stack([np.asarray(_array(found[i]), dtype=np.float32) for i in ids])

    # --- search ------------------------------------------------------------------------------
    def search(self, user: str, query: np.ndarray, k: int, row: int | None = None,
               accept: Callable[[Fact], bool] | None = None) -> list[tuple[Fact, float]]:
        """The user's `k` live facts with the largest inner product with `query`, best first (exact)."""
        check_name(user, "user id")
        query = self._check_vector(query)
        size = self.count(user)
        if size == 0:
            return []

        def nearest(n: int) -> list[tuple[int, float]]:
            return [(int(i), float(s)) for i, s in self._all(
                f"SELECT id, -(embedding <#> %s) FROM memlm_facts WHERE owner = %s AND {_LIVE} "
                "ORDER BY embedding <#> %s, id LIMIT %s", (query, user, self.clock(), query, n))]

        return self._filtered(user, nearest, size, k, row, accept)

    def lexical_search(self, user: str, query: str, k: int, row: int | None = None,
                       accept: Callable[[Fact], bool] | None = None) -> list[tuple[Fact, float]]:
        with self._lock:
            lexical = self._synced_lexical(user)
            if len(lexical) == 0:
                return []
            return self._filtered(user, lambda n: lexical.search(query, n), len(lexical), k, row, accept)

    def _facts_by_id(self, user: str, ids: list[int]) -> list[Fact]:
        if not ids:
            return []
        return [Fact(*found) for found in self._all(
            f"SELECT {_COLUMNS} FROM memlm_facts WHERE owner = %s AND id = ANY(%s)", (user, ids))]

    def _synced_lexical(self, user: str) -> LexicalIndex:
        """The user's BM25 index, brought up to date with the changes any process made (active facts only)."""
        check_name(user, "user id")
        lexical, applied = self._lexical.get(user, (None, 0))
        if lexical is None:
            lexical = LexicalIndex()
        latest = self.version(user)
        if latest > applied:
            changed = [found[0] for found in self._all(
                "SELECT DISTINCT fact_id FROM memlm_history WHERE owner = %s AND id > %s AND id <= %s",
                (user, applied, latest))]
            present = [fact_id for fact_id in changed if fact_id in lexical]
            if present:
                lexical.remove(present)
            for fact_id, text, spoken, context in self._all(
                    "SELECT id, text, spoken, context FROM memlm_facts WHERE owner = %s AND id = ANY(%s) "
                    "AND status = %s",
                    (user, changed, ACTIVE)):
                lexical.add(fact_id, search_text(text, spoken, context))
        self._lexical[user] = (lexical, latest)
        return lexical


def _array(value: Any) -> np.ndarray:
    """A pgvector value as numpy (pgvector returns `Vector` objects or arrays, by version)."""
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)


def _bytes(vector: np.ndarray | None) -> bytes | None:
    return None if vector is None else np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def open_postgres(url: str, dimension: int, encoder: str, clock: Callable[[], float] = time.time) -> PostgresFactStore:
    return PostgresFactStore(url, dimension, encoder, clock)


register_backend("postgresql", open_postgres)
register_backend("postgres", open_postgres)

