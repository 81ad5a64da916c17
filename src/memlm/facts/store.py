"""The fact store behind the `bank` memory and `memlm.FactMemory`: SQLite rows plus per-user FAISS indexes.

Every fact belongs to exactly one user, and every read and write names that user: the SQL of each
method filters on it and each user has a separate vector index, so one user's search can never
return another user's fact, whatever the caller does above this layer.

Tables:

* `facts` — id, user, category, text, normalised-text key (exact duplicates), retrieval embedding
  (float32 blob), optional latent vector (the backbone's view, for latent fusion), importance,
  created / last used / use count, source (the raw turn or document it came from), session, row;
  since schema 2 also: the user's own sentence (`spoken`, first person, when the fact came from
  chat), `status` ("active" or "superseded") and `superseded_by`, `expires_at`, `updated`,
  `metadata` (JSON), `agent_id`, `run_id`.
* `history` — every add / update / supersede / delete with old and new text, who did it, when and
  why (`reason`, e.g. which fact superseded it and by what rule). It doubles as the change log that
  keeps each process's in-memory indexes (FAISS vectors and the BM25 index) in step with the
  database, so several processes can share one store file (SQLite serialises their writes).

Only active, unexpired facts are ever searched: superseded facts leave both indexes, expired ones are
filtered out at query time (expiry needs no write), and deleted ones are gone; `history` keeps all of
them.
* `users` — users that ever stored a fact (a known user with no facts left searches to nothing;
  an unknown user is an error).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from memlm.errors import ConfigError, IncompatibleMemoryError, MemlmError, storage_error
from memlm.facts.backends.base import FactBackend
from memlm.facts.connection import SerializedConnection
from memlm.facts.lexical import LexicalIndex
from memlm.facts.records import (  # noqa: F401  (re-exported: the store's public names live here too)
    ACTIVE,
    CONTROL_CHARACTERS,
    MAX_FACT_CHARS,
    MAX_SOURCE_CHARS,
    SUPERSEDED,
    DuplicateFactError,
    Fact,
    FactChange,
    FactNotFoundError,
    UnknownUserError,
    _check_metadata,
    _check_time,
    _metadata_json,
    check_id,
    check_text,
    search_text,
    text_key,
)
from memlm.facts.schema import _FACT_COLUMNS, _INDEXES, _LIVE, _NEW_COLUMNS, _SCHEMA, SCHEMA_VERSION  # noqa: F401 (SCHEMA_VERSION: public)
from memlm.facts.vector_index import UserIndex
from memlm.paths import check_name
from memlm.store.sqlite import connect, copy_database, get_meta, set_meta, transaction


def _blob(vector: np.ndarray | None) -> bytes | None:
    return None if vector is None else np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class FactStore(FactBackend):
    """Facts of many users in one SQLite file (`path=None`: in memory), searched per user.

    Args:
        path: database file; created if missing (a schema-1 file gains the schema-2 columns in place).
        dimension: width of the retrieval embeddings.
        encoder: name of the encoder that made them; opening a store made with another encoder or
            width raises `IncompatibleMemoryError` (its vectors would be meaningless here).
        clock: returns the current time (tests and `retention_curve` simulate time with it).
    """

    def __init__(self, path: str | os.PathLike | None, dimension: int, encoder: str,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise storage_error(error, str(self.path)) from error
        self.dimension = dimension
        self.encoder = encoder
        self.clock = clock
        self._lock = threading.RLock()
        self.connection = SerializedConnection(connect(self.path, _SCHEMA, SCHEMA_VERSION), self._lock)
        # user -> (vector index, lexical index, last change applied)
        self._indexes: dict[str, tuple[UserIndex, LexicalIndex, int]] = {}
        self._batch_version: int | None = None  # inside `batch()`: the newest change committed when it began
        self._migrate()
        self._check_encoder()

    def _migrate(self) -> None:
        """Bring a schema-1 file up to schema 2: new columns (existing facts stay active, never expire)."""
        with transaction(self.connection):
            for table, columns in _NEW_COLUMNS.items():
                present = {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns:
                    if name not in present:
                        self.connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            for statement in filter(str.strip, _INDEXES.split(";")):
                self.connection.execute(statement)
            if int(get_meta(self.connection, "schema_version") or 0) < SCHEMA_VERSION:
                set_meta(self.connection, "schema_version", SCHEMA_VERSION)

    def _check_encoder(self) -> None:
        saved = get_meta(self.connection, "encoder")
        if saved is None:
            with transaction(self.connection):
                if get_meta(self.connection, "encoder") is None:
                    set_meta(self.connection, "encoder", {"name": self.encoder, "dimension": self.dimension})
            saved = get_meta(self.connection, "encoder")
        if saved != {"name": self.encoder, "dimension": self.dimension}:
            raise IncompatibleMemoryError(
                f"{self.path} holds facts embedded by {saved.get('name')} ({saved.get('dimension')}-d), "
                f"but this bank uses {self.encoder} ({self.dimension}-d); open it with the same encoder")

    def close(self) -> None:
        self.connection.close()

    # --- users -------------------------------------------------------------------------------
    def users(self) -> list[str]:
        return [row[0] for row in self.connection.execute("SELECT user FROM users ORDER BY user")]

    def has_user(self, user: str) -> bool:
        check_name(user, "user id")
        return self.connection.execute("SELECT 1 FROM users WHERE user = ?", (user,)).fetchone() is not None

    def latest_in_run(self, user: str, run_id: str) -> Fact | None:
        sql = f"SELECT {_FACT_COLUMNS} FROM facts WHERE user = ? AND run_id = ? ORDER BY id DESC LIMIT 1"
        found = self.connection.execute(sql, (user, run_id)).fetchone()
        return None if found is None else Fact(*found)

    def scope_in_other_owners(self, field: str, value: str, owner: str) -> bool:
        if field not in ("agent_id", "run_id"):
            raise ConfigError(f"no scope field {field!r}")
        sql = f"SELECT 1 FROM facts WHERE {field} = ? AND user != ? LIMIT 1"
        return self.connection.execute(sql, (value, owner)).fetchone() is not None

    def require_user(self, user: str) -> str:
        if not self.has_user(user):
            raise UnknownUserError(f"no memories were ever stored for user {user!r}")
        return user

    # --- writing -----------------------------------------------------------------------------
    def add(self, user: str, text: str, embedding: np.ndarray, *, importance: float, category: str | None = None,
            source: str | None = None, session: str | None = None, row: int | None = None,
            latent: np.ndarray | None = None, actor: str | None = None, spoken: str | None = None,
            expires_at: float | None = None, metadata: dict[str, Any] | None = None,
            agent_id: str | None = None, run_id: str | None = None, supersedes: Iterable[int] = (),
            reason: str | None = None, slot: str | None = None, context: str | None = None) -> Fact:
        """Insert one fact (and its history entry) in one transaction; the facts in `supersedes` are
        marked superseded by it in the same transaction (`reason` says why). `context` is searched by
        words with it (`search_text`) but is not part of it."""
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
        with self._lock, self._write():
            self.connection.execute("INSERT OR IGNORE INTO users (user, created) VALUES (?, ?)", (user, now))
            try:
                cursor = self.connection.execute(
                    "INSERT INTO facts (user, category, text, text_key, embedding, latent, importance, created, "
                    "last_used, source, session, row, spoken, expires_at, updated, metadata, agent_id, run_id, slot, "
                    "context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (user, category, text, text_key(text), _blob(embedding), _blob(latent), float(importance),
                     now, now, source, session, row, spoken, expires_at, now, metadata_json, agent_id, run_id,
                     slot, context))
            except sqlite3.IntegrityError:
                raise DuplicateFactError(f"an identical fact is already stored for user {user!r}") from None
            fact_id = int(cursor.lastrowid)
            self._log(fact_id, user, "add", None, text, actor, now, reason)
            for old_id in supersedes:
                self._supersede(int(old_id), fact_id, user, actor, now, reason)
        return self.get(fact_id, user=user)

    def add_many(self, user: str, texts: list[str], embeddings: np.ndarray, *, importance: float = 1.0,
                 actor: str | None = None) -> list[int]:
        """Insert many plain facts of one user and their history entries in one transaction (all or
        none: a duplicate among them raises `DuplicateFactError` and nothing is written)."""
        check_name(user, "user id")
        texts = [check_text(text) for text in texts]
        vectors = [self._check_vector(vector) for vector in embeddings]
        if len(vectors) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(vectors)} embeddings")
        now = self.clock()
        ids = []
        with self._lock, self._write():
            self.connection.execute("INSERT OR IGNORE INTO users (user, created) VALUES (?, ?)", (user, now))
            for text, vector in zip(texts, vectors, strict=True):
                try:
                    cursor = self.connection.execute(
                        "INSERT INTO facts (user, text, text_key, embedding, importance, created, last_used, updated) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (user, text, text_key(text), _blob(vector), float(importance), now, now, now))
                except sqlite3.IntegrityError:
                    raise DuplicateFactError(f"an identical fact is already stored for user {user!r}") from None
                ids.append(int(cursor.lastrowid))
            self.connection.executemany(
                "INSERT INTO history (fact_id, user, action, old_text, new_text, actor, time, reason) "
                "VALUES (?, ?, 'add', NULL, ?, ?, ?, NULL)",
                [(fact_id, user, text, actor, now) for fact_id, text in zip(ids, texts, strict=True)])
        return ids

    def _supersede(self, old_id: int, new_id: int, user: str, actor: str | None, now: float,
                   reason: str | None) -> None:
        row = self.connection.execute("SELECT text FROM facts WHERE id = ? AND user = ? AND status = 'active'",
                                      (old_id, user)).fetchone()
        if row is None:
            return
        self.connection.execute("UPDATE facts SET status = ?, superseded_by = ?, updated = ? WHERE id = ?",
                                (SUPERSEDED, new_id, now, old_id))
        new_text = self.connection.execute("SELECT text FROM facts WHERE id = ?", (new_id,)).fetchone()[0]
        self._log(old_id, user, "supersede", row[0], new_text, actor, now,
                  f"superseded by fact {new_id}" + (f": {reason}" if reason else ""))

    def update(self, fact_id: int, user: str, text: str | None = None, embedding: np.ndarray | None = None, *,
               latent: np.ndarray | None = None, actor: str | None = None, metadata: dict[str, Any] | None = None,
               expires_at: float | None | type[Ellipsis] = ..., spoken: str | None = None,
               slot: str | None = None) -> Fact:
        """Change a fact's text (with its new `embedding`), metadata (merged) or expiry (`None`: never)."""
        old = self.get(fact_id, user=user)
        now = self.clock()
        assignments: dict[str, Any] = {"updated": now}
        if text is not None:
            text = check_text(text)
            if embedding is None:
                raise ConfigError("a new text needs its embedding")
            assignments.update(text=text, text_key=text_key(text), embedding=_blob(self._check_vector(embedding)),
                               latent=_blob(latent), last_used=now, spoken=spoken, slot=slot)
        if metadata is not None:
            assignments["metadata"] = _metadata_json({**(old.metadata or {}), **_check_metadata(metadata)})
        if expires_at is not ...:
            assignments["expires_at"] = _check_time(expires_at, "expires_at")
        with self._lock, self._write():
            try:
                self.connection.execute(
                    f"UPDATE facts SET {', '.join(f'{name} = ?' for name in assignments)} WHERE id = ? AND user = ?",
                    [*assignments.values(), fact_id, user])
            except sqlite3.IntegrityError:
                raise DuplicateFactError(f"user {user!r} already has a fact with this text") from None
            self._log(fact_id, user, "update", old.text, text if text is not None else old.text, actor, now)
        return self.get(fact_id, user=user)

    def delete(self, fact_ids: Iterable[int], user: str, actor: str | None = None) -> int:
        """Delete facts of `user` by id; ids of other users are not touched. Returns how many went."""
        check_name(user, "user id")
        now, deleted = self.clock(), 0
        with self._lock, self._write():
            for fact_id in fact_ids:
                row = self.connection.execute("SELECT text FROM facts WHERE id = ? AND user = ?",
                                              (int(fact_id), user)).fetchone()
                if row is None:
                    continue
                self.connection.execute("DELETE FROM facts WHERE id = ?", (int(fact_id),))
                self._log(int(fact_id), user, "delete", row[0], None, actor, now)
                deleted += 1
        return deleted

    def delete_all(self, user: str, actor: str | None = None) -> int:
        self.require_user(user)
        ids = [row[0] for row in self.connection.execute("SELECT id FROM facts WHERE user = ?", (user,))]
        return self.delete(ids, user, actor)

    def touch(self, fact_ids: Iterable[int], user: str, now: float | None = None) -> None:
        """Mark facts as used at `now` (default: now; recency and use counts feed ranking and eviction)."""
        now = self.clock() if now is None else now
        with self._lock, self._write():
            self.connection.executemany(
                "UPDATE facts SET last_used = ?, use_count = use_count + 1 WHERE id = ? AND user = ?",
                [(now, int(i), user) for i in fact_ids])

    # --- one transaction for many writes ----------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is part of one transaction (one fsync): committed when the block ends,
        rolled back if it raises. Other processes' writes wait until then (`BEGIN IMMEDIATE`).

        Searches inside see the facts committed when the batch began, not its own writes: the
        in-memory indexes only ever hold committed rows, so a rollback leaves nothing behind in them
        (`FactBank.remember_turn` accounts for the turn's own facts itself). Nested: part of the outer."""
        with self._lock:
            if self._batch_version is not None:
                yield
                return
            with transaction(self.connection):
                self._batch_version = self.version()
                try:
                    yield
                finally:
                    self._batch_version = None

    def _write(self) -> contextlib.AbstractContextManager[Any]:
        """The transaction of one write: its own, or the open `batch()`'s."""
        return contextlib.nullcontext() if self._batch_version is not None else transaction(self.connection)

    def _log(self, fact_id: int, user: str, action: str, old_text: str | None, new_text: str | None,
             actor: str | None, now: float, reason: str | None = None) -> None:
        self.connection.execute(
            "INSERT INTO history (fact_id, user, action, old_text, new_text, actor, time, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (fact_id, user, action, old_text, new_text, actor, now, reason))

    def _check_vector(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dimension:
            raise IncompatibleMemoryError(f"embedding has width {vector.shape[0]}, the store holds {self.dimension}")
        if not np.isfinite(vector).all():
            raise ConfigError("embedding contains NaN or infinity")
        return vector

    # --- reading -----------------------------------------------------------------------------
    def get(self, fact_id: int, user: str | None = None) -> Fact:
        """One fact (active, superseded or expired); with `user`, a fact of another user is reported missing."""
        fact_id = check_id(fact_id)
        sql, params = f"SELECT {_FACT_COLUMNS} FROM facts WHERE id = ?", [fact_id]
        if user is not None:
            sql, params = sql + " AND user = ?", [*params, check_name(user, "user id")]
        row = self.connection.execute(sql, params).fetchone()
        if row is None:
            raise FactNotFoundError(f"no fact with id {fact_id}" + (f" for user {user!r}" if user else ""))
        return Fact(*row)

    def facts(self, user: str, category: str | None = None, limit: int | None = None, offset: int = 0,
              order: str = "id", include_inactive: bool = False) -> list[Fact]:
        """The user's facts; only the live ones (active, unexpired) unless `include_inactive`."""
        orders = {"id": "id", "importance": "importance DESC, id", "recent": "last_used DESC, id"}
        sql, params = f"SELECT {_FACT_COLUMNS} FROM facts WHERE user = ?", [user]
        if not include_inactive:
            sql, params = sql + f" AND {_LIVE}", [*params, self.clock()]
        if category is not None:
            sql, params = sql + " AND category = ?", [*params, category]
        sql += f" ORDER BY {orders[order]} LIMIT ? OFFSET ?"
        return [Fact(*row) for row in self.connection.execute(sql, [*params, limit or -1, offset])]

    def count(self, user: str, include_inactive: bool = False) -> int:
        if include_inactive:
            return int(self.connection.execute("SELECT COUNT(*) FROM facts WHERE user = ?", (user,)).fetchone()[0])
        return int(self.connection.execute(f"SELECT COUNT(*) FROM facts WHERE user = ? AND {_LIVE}",
                                           (user, self.clock())).fetchone()[0])

    def slot_facts(self, user: str, slot: str, row: int | None = None) -> list[Fact]:
        """The user's active facts that fill `slot` (the candidates a new fact may supersede)."""
        sql = f"SELECT {_FACT_COLUMNS} FROM facts WHERE user = ? AND slot = ? AND row IS ? AND status = 'active'"
        return [Fact(*found) for found in self.connection.execute(sql + " ORDER BY id", (user, slot, row))]

    def find_duplicate(self, user: str, text: str, row: int | None = None) -> Fact | None:
        """The user's active fact with the same normalised text (expired ones count: it is the same fact)."""
        sql = f"SELECT {_FACT_COLUMNS} FROM facts WHERE user = ? AND text_key = ? AND row IS ? AND status = 'active'"
        found = self.connection.execute(sql, (user, text_key(text), row)).fetchone()
        return None if found is None else Fact(*found)

    def history(self, fact_id: int, user: str | None = None) -> list[FactChange]:
        fact_id = check_id(fact_id)
        sql, params = "SELECT id, fact_id, user, action, old_text, new_text, actor, time, reason " \
                      "FROM history WHERE fact_id = ?", [fact_id]
        if user is not None:
            sql, params = sql + " AND user = ?", [*params, user]
        changes = [FactChange(*row) for row in self.connection.execute(sql + " ORDER BY id", params)]
        if not changes:
            raise FactNotFoundError(f"no fact with id {fact_id}" + (f" for user {user!r}" if user else ""))
        return changes

    def latents(self, user: str) -> tuple[list[int], list[int | None], list[np.ndarray]]:
        """(ids, rows, latent vectors) of the user's live facts that have a latent vector."""
        ids, rows, vectors = [], [], []
        for fact_id, row, blob in self.connection.execute(
                f"SELECT id, row, latent FROM facts WHERE user = ? AND latent IS NOT NULL AND {_LIVE} ORDER BY id",
                (user, self.clock())):
            ids.append(fact_id)
            rows.append(row)
            vectors.append(np.frombuffer(blob, dtype=np.float32))
        return ids, rows, vectors

    def version(self, user: str | None = None) -> int:
        """Id of the newest change (of `user`): changes whenever a fact is added, updated or deleted."""
        if user is None:
            return int(self.connection.execute("SELECT COALESCE(MAX(id), 0) FROM history").fetchone()[0])
        return int(self.connection.execute("SELECT COALESCE(MAX(id), 0) FROM history WHERE user = ?",
                                           (user,)).fetchone()[0])

    # --- search ------------------------------------------------------------------------------
    def search(self, user: str, query: np.ndarray, k: int, row: int | None = None,
               accept: Callable[[Fact], bool] | None = None) -> list[tuple[Fact, float]]:
        """The user's `k` live facts most similar to `query` (cosine for unit vectors), best first.

        With `row`, only facts written from that batch row or visible to all rows are returned; with
        `accept`, only facts it accepts (e.g. metadata filters). Expired facts are skipped here: the
        search widens until `k` facts pass or the index is exhausted.
        """
        query = self._check_vector(query).reshape(1, -1)
        with self._lock:
            index, _ = self._synced_indexes(user)
            if len(index) == 0:
                return []
            return self._filtered(user, lambda n: index.search(query, n), len(index), k, row, accept)

    def lexical_search(self, user: str, query: str, k: int, row: int | None = None,
                       accept: Callable[[Fact], bool] | None = None) -> list[tuple[Fact, float]]:
        """The user's `k` live facts with the best BM25 score for `query`, best first (same filters
        as `search`); facts sharing no term with the query are not returned."""
        with self._lock:
            _, lexical = self._synced_indexes(user)
            if len(lexical) == 0:
                return []
            return self._filtered(user, lambda n: lexical.search(query, n), len(lexical), k, row, accept)

    def near(self, user: str, vectors: np.ndarray, threshold: float) -> list[list[tuple[int, float]]] | None:
        """For each vector, (fact id, cosine) of every one of the user's active facts whose cosine is
        at least `threshold`, best first, in one pass (`UserIndex.near`): what a near-duplicate check
        needs. Expiry and rows are not checked yet (`facts_by_id` reads the facts). None when the
        index cannot (a shared one: `search` instead)."""
        vectors = np.stack([self._check_vector(vector) for vector in vectors])
        with self._lock:
            index, _ = self._synced_indexes(user)
            near = getattr(index, "near", None)
            return None if near is None else near(vectors, threshold)

    def facts_by_id(self, user: str, ids: list[int]) -> list[Fact]:
        """The user's facts with these ids (any status; ids of other users are left out), in no order."""
        return self._facts_by_id(user, [check_id(fact_id) for fact_id in ids])

    def _facts_by_id(self, user: str, ids: list[int]) -> list[Fact]:
        facts = []
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            facts += [Fact(*row) for row in self.connection.execute(
                f"SELECT {_FACT_COLUMNS} FROM facts WHERE user = ? AND id IN ({marks})", [user, *chunk])]
        return facts

    # The vector index of one user: FAISS in this process (a subclass may keep it in a vector engine
    # shared by processes, `shared_index = True`; memlm.facts.backends.milvus).
    shared_index = False

    def _new_index(self, user: str) -> UserIndex:
        return UserIndex(self.dimension)

    def _synced_index(self, user: str) -> UserIndex:
        return self._synced_indexes(user)[0]

    def _synced_indexes(self, user: str) -> tuple[UserIndex, LexicalIndex]:
        """The user's vector and lexical indexes, first brought up to date with changes made by any
        process. Only active facts are in them (a superseded fact leaves both)."""
        check_name(user, "user id")
        index, lexical, applied = self._indexes.get(user, (None, None, 0))
        if index is None or lexical is None:
            index, lexical = self._new_index(user), LexicalIndex()
        latest = self.version(user)
        if self._batch_version is not None:  # never the open batch's own (uncommitted) changes
            latest = min(latest, self._batch_version)
        if latest > applied:
            changes = self.connection.execute(
                "SELECT DISTINCT fact_id FROM history WHERE user = ? AND id > ? AND id <= ?", (user, applied, latest))
            changed = [row[0] for row in changes]
            if changed:
                # Both indexes hold the same ids; only those already there need removing (removing
                # from a flat FAISS index rewrites it: ~70 ms at 100K facts, wasted on a new fact).
                present = [fact_id for fact_id in changed if fact_id in lexical]
                if present:
                    lexical.remove(present)
                # A shared vector index (another engine's) may hold what another process wrote: every
                # changed id leaves it (idempotent); a private one only loses what it holds.
                stale = changed if self.shared_index else present
                if stale:
                    index.remove(np.asarray(stale, dtype=np.int64))
                reserve = getattr(index, "reserve", None)
                if reserve is not None:  # one allocation for a process's first sync (every fact of the user)
                    reserve(len(index) + len(changed))
                for start in range(0, len(changed), 900):  # SQLite's bound-parameter limit
                    chunk = changed[start:start + 900]
                    marks = ",".join("?" * len(chunk))
                    rows = self.connection.execute(
                        f"SELECT id, embedding, text, spoken, context FROM facts WHERE user = ? AND id IN ({marks}) "
                        f"AND status = 'active'", [user, *chunk]).fetchall()
                    if rows:
                        vectors = np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob, *_ in rows])
                        index.add(vectors, np.asarray([i for i, *_ in rows], dtype=np.int64))
                        for fact_id, _, text, spoken, context in rows:
                            lexical.add(fact_id, search_text(text, spoken, context))
        self._indexes[user] = (index, lexical, latest)
        return index, lexical

    def embeddings(self, user: str, ids: list[int]) -> np.ndarray:
        """Retrieval embeddings of the given facts of `user`, in the order of `ids`."""
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        marks = ",".join("?" * len(ids))
        rows = dict(self.connection.execute(f"SELECT id, embedding FROM facts WHERE user = ? AND id IN ({marks})",
                                            [user, *ids]).fetchall())
        return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

    # --- consistency -------------------------------------------------------------------------
    def check(self) -> dict[str, int]:
        """Check the store's consistency; raise `CorruptedFileError` listing what is wrong.

        Checks SQLite's own `integrity_check`, then per user: every fact row has a user row, an
        embedding of the store's width and an `add` in its history; and the in-memory FAISS and BM25
        indexes, brought up to date from the change log, hold exactly the ids of the user's active
        facts. Returns counts (users, facts, active facts) when everything agrees."""
        from memlm.errors import CorruptedFileError

        problems: list[str] = []
        with self._lock:
            verdict = [row[0] for row in self.connection.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                problems.append(f"integrity_check: {'; '.join(map(str, verdict[:5]))}")
            users = set(self.users())
            fact_users = {row[0] for row in self.connection.execute("SELECT DISTINCT user FROM facts")}
            if fact_users - users:
                problems.append(f"facts of unregistered users {sorted(fact_users - users)[:5]}")
            width = 4 * self.dimension
            bad = self.connection.execute("SELECT COUNT(*) FROM facts WHERE length(embedding) != ?",
                                          (width,)).fetchone()[0]
            if bad:
                problems.append(f"{bad} fact(s) with an embedding of the wrong width")
            unlogged = self.connection.execute(
                "SELECT COUNT(*) FROM facts WHERE id NOT IN (SELECT fact_id FROM history WHERE action = 'add')"
            ).fetchone()[0]
            if unlogged:
                problems.append(f"{unlogged} fact(s) without an 'add' in the history")
            total = active_total = 0
            for user in sorted(users | fact_users):
                active = {row[0] for row in self.connection.execute(
                    "SELECT id FROM facts WHERE user = ? AND status = 'active'", (user,))}
                total += self.count(user, include_inactive=True)
                active_total += len(active)
                try:
                    index, lexical = self._synced_indexes(user)
                except MemlmError:
                    continue  # a name check_name refuses: already reported as a bad user above
                vector_ids = set(index.ids().tolist())
                lexical_ids = {fact_id for fact_id in lexical._slot}
                if vector_ids != active:
                    problems.append(f"user {user!r}: vector index holds {sorted(vector_ids - active)[:5]} "
                                    f"that are not active facts and misses {sorted(active - vector_ids)[:5]}")
                if lexical_ids != active:
                    problems.append(f"user {user!r}: lexical index disagrees with the active facts")
        if problems:
            raise CorruptedFileError(f"fact store {self.path or ':memory:'} is inconsistent: " + "; ".join(problems))
        return {"users": len(users), "facts": total, "active": active_total}

    # --- copies ------------------------------------------------------------------------------
    def copy_to(self, path: Path) -> None:
        copy_database(self.connection, path)

    def replace_with(self, other: FactStore) -> None:
        """Make this (in-memory) store an exact copy of `other`."""
        with self._lock:
            other.connection.backup(self.connection.raw)
            self._indexes.clear()
