"""Where a key/value store persists beyond its directory: PostgreSQL + pgvector, or Milvus.

The knn memory searches its keys in device memory (`KeyValueStore`); what a backend holds is the
saved state it loads from: the provenance rows and, per group, every item's keys, value, use count
and origin. The URLs are the fact store's (`memlm.facts.backends`):

| location                                   | records                    | vectors                          |
|--------------------------------------------|----------------------------|----------------------------------|
| a directory (the default, unchanged)       | `records.sqlite`           | `vectors-NNNNNN.safetensors`    |
| `postgresql://user:pw@host/db`             | table `memlm_kv_records`   | table `memlm_kv_vectors` (pgvector) |
| `milvus:///folder`, `milvus://host:19530?records=file` | SQLite `kv_records` | a Milvus collection per width |

Many memories share one backend, each under a *name* (a user, a session): every statement filters
on it, so loading one name never returns another's items. A save replaces the name's saved state
atomically: PostgreSQL in one transaction (under an advisory lock on the name); Milvus by writing
the vectors tagged with a new generation first, then committing that generation in the SQLite
records in one transaction, then deleting older generations (a writer killed in between leaves
rows of an uncommitted generation that no load reads and the next save deletes).

Saves write the whole state of the name (not only what changed since the last save). Keys are kept
per item as one vector of heads x key_dim floats, so only the `torch` index backend (the default)
can be saved here; FAISS indexes are saved in directories.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError
from memlm.store.records import COLUMNS, Record

REMOTE_SCHEMES = ("postgresql", "postgres", "milvus")
STORE_ENV = "MEMLM_STORE"  # as memlm.facts.backends.STORE_ENV (not imported: it loads the fact store)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_NAME = re.compile(r"[A-Za-z0-9_@:+-][A-Za-z0-9_.@:+ -]{0,199}")  # fullmatch: `$` passes "name\n"


def is_remote(location: Any) -> bool:
    """Whether `location` names a database backend rather than a directory."""
    if location is None or isinstance(location, Path):
        return False
    match = _SCHEME.match(str(location))
    if match is None:
        return False
    scheme = match.group(1).lower()
    if scheme == "sqlite":
        raise ConfigError("a key/value store on SQLite is a directory: give its path, not a sqlite:// URL")
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(f"no key/value store backend for {scheme}:// URLs; use a directory, "
                          "postgresql://user:password@host/db or milvus://...")
    return True


REFERENCE_FILE = "store.json"  # in a state directory: where a database-backed memory was saved


def configured_store(option: str | None) -> str | None:
    """The database a memory persists in: `option` (a memory's `store`), else `MEMLM_STORE` where it
    is a postgresql:// or milvus:// URL (it may also name a fact store file); None: a directory."""
    if option is not None:
        return option
    url = os.environ.get(STORE_ENV, "")
    return url if "://" in url and url.split("://", 1)[0].lower() in REMOTE_SCHEMES else None


def save_reference(store: Any, directory: Path, url: str, name: str) -> None:
    """Save `store` (a KeyValueStore) into the database at `url` under `name`, then leave in
    `directory` the reference a later load follows (the URL without its password)."""
    from memlm.serialization import atomic_write_json

    store.save_to(url, name)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / REFERENCE_FILE, {"store": redact(url), "name": name})


def read_reference(directory: Path, url: str | None) -> str | None:
    """The name a state directory's memory was saved under in a database (None: it holds its own
    files); `url` is the database configured now, which must be given to follow the reference."""
    if not (directory / REFERENCE_FILE).exists():
        return None
    from memlm.serialization import read_json

    saved = read_json(directory / REFERENCE_FILE)
    if not isinstance(saved, dict) or not isinstance(saved.get("name"), str):
        raise CorruptedFileError(f"{directory / REFERENCE_FILE} is not a key/value store reference")
    if url is None:
        raise ConfigError(f"this state's memory is saved in {saved.get('store')} as {saved['name']!r}: set "
                          "MEMLM_STORE (or the knn memory's `store` option) to that URL to load it")
    return saved["name"]


def check_store_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"a saved memory's name must be 1-200 letters, digits, spaces or _.@:+- not starting "
                          f"with a dot (got {name!r}): name it after its user or session")
    return name


@dataclass
class GroupState:
    """One group's items as saved: ids (N,), keys (N, heads * key_dim) float32, values (N, heads *
    value_dim) float32 or (N,) token ids, hits (N,), origins (N, 2)."""

    ids: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    hits: np.ndarray
    origins: np.ndarray


@dataclass
class Snapshot:
    layout: dict[str, Any]
    generation: int
    records: list[Record]
    groups: dict[str, GroupState]  # "kind.row.layer" -> its items


class KVBackend(ABC):
    """Saved key/value stores of many names (see the module docstring)."""

    url: str

    @abstractmethod
    def save(self, name: str, snapshot: Snapshot) -> int:
        """Replace `name`'s saved state by `snapshot` atomically; return the new generation."""

    @abstractmethod
    def load(self, name: str) -> Snapshot:
        """The committed state of `name`; `FileNotFoundError` if nothing was saved under it."""

    @abstractmethod
    def remove(self, name: str) -> bool:
        """Forget `name` (records and vectors); whether anything was saved under it."""

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def close(self) -> None: ...

    def _check_layout(self, name: str, saved: dict[str, Any] | None, layout: dict[str, Any]) -> None:
        if saved is not None and saved.get("specs") != layout.get("specs"):
            raise IncompatibleMemoryError(
                f"{redact(self.url)} holds a memory {name!r} of layout {saved.get('specs')}, not "
                f"{layout.get('specs')} (another model?): load it with that model, or remove it first")


def redact(location: Any) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(location))


def open_kv_backend(url: str) -> KVBackend:
    """The backend a `postgresql://` or `milvus://` URL names (`ConfigError` for anything else)."""
    if not is_remote(url):
        raise ConfigError(f"{url!r} is not a postgresql:// or milvus:// URL")
    scheme = _SCHEME.match(url).group(1).lower()
    return PostgresKV(url) if scheme in ("postgresql", "postgres") else MilvusKV(url)


# --- PostgreSQL + pgvector ---------------------------------------------------------------------

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS memlm_kv_stores (name TEXT PRIMARY KEY, generation BIGINT NOT NULL,
    layout TEXT NOT NULL, counts TEXT NOT NULL, saved DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS memlm_kv_records (name TEXT NOT NULL, id BIGINT NOT NULL, kind TEXT NOT NULL,
    layer INTEGER NOT NULL, "user" TEXT, session TEXT, sequence BIGINT NOT NULL, "row" INTEGER NOT NULL,
    position BIGINT NOT NULL, token BIGINT NOT NULL, length INTEGER NOT NULL, text TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, context TEXT NOT NULL, PRIMARY KEY (name, id));
CREATE TABLE IF NOT EXISTS memlm_kv_vectors (name TEXT NOT NULL, grp TEXT NOT NULL, id BIGINT NOT NULL,
    key vector NOT NULL, value BYTEA NOT NULL, hits BIGINT NOT NULL, sequence BIGINT NOT NULL,
    position BIGINT NOT NULL, PRIMARY KEY (name, grp, id))
"""
_PG_LOCK = 0x6D656D6C6D6B76  # serialises schema creation between processes


class PostgresKV(KVBackend):
    def __init__(self, url: str):
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError as error:
            raise ConfigError("the postgres store needs `pip install memlm[postgres]` (psycopg, pgvector)") from error
        self.url = url
        try:
            self.connection = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as error:
            raise ConfigError(f"cannot reach the PostgreSQL store {redact(url)}: {error}; check the URL and that "
                              "the server runs") from error
        self._lock = threading.RLock()
        with self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            self.connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self.connection)
        with self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            for statement in filter(str.strip, _PG_SCHEMA.split(";")):
                self.connection.execute(statement)

    def save(self, name: str, snapshot: Snapshot) -> int:
        check_store_name(name)
        columns = ", ".join(f'"{c}"' for c in COLUMNS)
        with self._lock, self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (name,))
            found = self.connection.execute("SELECT generation, layout FROM memlm_kv_stores WHERE name = %s",
                                            (name,)).fetchone()
            self._check_layout(name, None if found is None else json.loads(found[1]), snapshot.layout)
            generation = 1 + (0 if found is None else int(found[0]))
            self.connection.execute("DELETE FROM memlm_kv_records WHERE name = %s", (name,))
            self.connection.execute("DELETE FROM memlm_kv_vectors WHERE name = %s", (name,))
            cursor = self.connection.cursor()
            with cursor.copy(f"COPY memlm_kv_records (name, {columns}) FROM STDIN") as copy:
                for record in snapshot.records:
                    copy.write_row((name, *(getattr(record, c) for c in COLUMNS)))
            with cursor.copy("COPY memlm_kv_vectors (name, grp, id, key, value, hits, sequence, position) "
                             "FROM STDIN") as copy:
                for group, state in snapshot.groups.items():
                    for i in range(len(state.ids)):
                        copy.write_row((name, group, int(state.ids[i]), state.keys[i], _value_bytes(state.values[i]),
                                        int(state.hits[i]), int(state.origins[i, 0]), int(state.origins[i, 1])))
            counts = {group: len(state.ids) for group, state in snapshot.groups.items()}
            self.connection.execute(
                "INSERT INTO memlm_kv_stores (name, generation, layout, counts, saved) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET generation = EXCLUDED.generation, layout = EXCLUDED.layout, "
                "counts = EXCLUDED.counts, saved = EXCLUDED.saved",
                (name, generation, json.dumps(snapshot.layout), json.dumps(counts), time.time()))
        return generation

    def load(self, name: str) -> Snapshot:
        check_store_name(name)
        columns = ", ".join(f'"{c}"' for c in COLUMNS)
        with self._lock, self.connection.transaction():  # one snapshot of the name (REPEATABLE READ below)
            self.connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            found = self.connection.execute("SELECT generation, layout, counts FROM memlm_kv_stores WHERE name = %s",
                                            (name,)).fetchone()
            if found is None:
                raise FileNotFoundError(f"no memory named {name!r} is saved in {redact(self.url)}")
            records = [Record(*row) for row in self.connection.execute(
                f"SELECT {columns} FROM memlm_kv_records WHERE name = %s ORDER BY id", (name,))]
            rows: dict[str, list[tuple]] = {}
            for row in self.connection.execute(
                    "SELECT grp, id, key, value, hits, sequence, position FROM memlm_kv_vectors WHERE name = %s "
                    "ORDER BY grp, id", (name,)):
                rows.setdefault(row[0], []).append(row[1:])
        layout, counts = json.loads(found[1]), json.loads(found[2])
        groups = {group: _group_state(group, items, layout) for group, items in rows.items()}
        _check_counts(name, self.url, counts, groups)
        return Snapshot(layout, int(found[0]), records, groups)

    def remove(self, name: str) -> bool:
        check_store_name(name)
        with self._lock, self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (name,))
            self.connection.execute("DELETE FROM memlm_kv_records WHERE name = %s", (name,))
            self.connection.execute("DELETE FROM memlm_kv_vectors WHERE name = %s", (name,))
            return self.connection.execute("DELETE FROM memlm_kv_stores WHERE name = %s", (name,)).rowcount > 0

    def names(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self.connection.execute("SELECT name FROM memlm_kv_stores ORDER BY name")]

    def close(self) -> None:
        self.connection.close()


# --- Milvus (vectors) + SQLite (records) -------------------------------------------------------

_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS kv_stores (name TEXT PRIMARY KEY, generation INTEGER NOT NULL, reserved INTEGER NOT NULL,
    layout TEXT NOT NULL, counts TEXT NOT NULL, saved REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kv_records (name TEXT NOT NULL, {", ".join(COLUMNS)}, PRIMARY KEY (name, id));
"""
_MILVUS_BATCH = 2000


class MilvusKV(KVBackend):
    def __init__(self, url: str):
        try:
            from pymilvus import MilvusClient
        except ImportError as error:
            raise ConfigError("the milvus store needs `pip install memlm[milvus]` (pymilvus, milvus-lite)") from error
        from memlm.facts.backends.milvus import _connect
        from memlm.store.sqlite import connect

        self.url = url
        parsed = urlparse(url)
        options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        if parsed.netloc:
            if "records" not in options:
                raise ConfigError("a milvus://host:port store needs ?records=<SQLite file for the records>")
            uri, records = f"http://{parsed.netloc}", options["records"]
        else:
            folder = Path(parsed.path)
            folder.mkdir(parents=True, exist_ok=True)
            uri, records = str(folder / "milvus.db"), options.get("records", str(folder / "kv.sqlite"))
        self.prefix = options.get("collection", "memlm") + "_kv"
        self.connection = connect(Path(records), _SQLITE_SCHEMA, 1)
        try:
            self.client = _connect(MilvusClient, uri)
        except Exception as error:  # noqa: BLE001 - pymilvus raises several kinds for an unreachable server
            self.connection.close()
            raise ConfigError(f"cannot reach the Milvus store {redact(url)}: {error}; check the URL and that the "
                              "server runs") from error
        self._collections: set[str] = set()

    def _collection(self, width: int) -> str:
        from pymilvus import DataType, MilvusClient

        name = f"{self.prefix}_d{width}"
        if name not in self._collections:
            if not self.client.has_collection(name):
                schema = MilvusClient.create_schema(auto_id=False)
                schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=512)
                schema.add_field("store", DataType.VARCHAR, max_length=256)
                schema.add_field("generation", DataType.INT64)
                schema.add_field("grp", DataType.VARCHAR, max_length=128)
                schema.add_field("item", DataType.INT64)
                schema.add_field("key", DataType.FLOAT_VECTOR, dim=int(width))
                schema.add_field("value", DataType.VARCHAR, max_length=65535)
                schema.add_field("hits", DataType.INT64)
                schema.add_field("sequence", DataType.INT64)
                schema.add_field("position", DataType.INT64)
                index = self.client.prepare_index_params()
                index.add_index("key", index_type="FLAT", metric_type="IP")
                try:
                    self.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
                except Exception:  # noqa: BLE001 - another process created it first
                    if not self.client.has_collection(name):
                        raise
            self._collections.add(name)
        return name

    def _widths(self, layout: dict[str, Any]) -> list[int]:
        return sorted({spec["heads"] * spec["key_dim"] for spec in layout["specs"].values()})

    def save(self, name: str, snapshot: Snapshot) -> int:
        from memlm.store.sqlite import transaction

        check_store_name(name)
        with transaction(self.connection):  # reserve a generation no other save of this name uses
            found = self.connection.execute("SELECT reserved, layout FROM kv_stores WHERE name = ?", (name,)).fetchone()
            self._check_layout(name, None if found is None else json.loads(found[1]), snapshot.layout)
            generation = 1 + (0 if found is None else int(found[0]))
            if found is None:
                self.connection.execute("INSERT INTO kv_stores VALUES (?, 0, ?, ?, '{}', ?)",
                                        (name, generation, json.dumps(snapshot.layout), time.time()))
            else:
                self.connection.execute("UPDATE kv_stores SET reserved = ? WHERE name = ?", (generation, name))
        for group, state in snapshot.groups.items():  # the vectors of the new generation, not yet committed
            collection = self._collection(state.keys.shape[1])
            rows = [{"pk": f"{name}|{generation}|{group}|{int(state.ids[i])}", "store": name,
                     "generation": generation, "grp": group, "item": int(state.ids[i]),
                     "key": state.keys[i].tolist(),
                     "value": base64.b64encode(_value_bytes(state.values[i])).decode("ascii"),
                     "hits": int(state.hits[i]), "sequence": int(state.origins[i, 0]),
                     "position": int(state.origins[i, 1])} for i in range(len(state.ids))]
            for first in range(0, len(rows), _MILVUS_BATCH):
                self.client.upsert(collection, rows[first: first + _MILVUS_BATCH])
        counts = {group: len(state.ids) for group, state in snapshot.groups.items()}
        with transaction(self.connection):  # the commit point
            committed = int(self.connection.execute("SELECT generation FROM kv_stores WHERE name = ?",
                                                    (name,)).fetchone()[0])
            if generation > committed:
                self.connection.execute("DELETE FROM kv_records WHERE name = ?", (name,))
                self.connection.executemany(
                    f"INSERT INTO kv_records (name, {', '.join(COLUMNS)}) VALUES (?{', ?' * len(COLUMNS)})",
                    [(name, *(getattr(record, c) for c in COLUMNS)) for record in snapshot.records])
                self.connection.execute("UPDATE kv_stores SET generation = ?, layout = ?, counts = ?, saved = ? "
                                        "WHERE name = ?", (generation, json.dumps(snapshot.layout),
                                                           json.dumps(counts), time.time(), name))
                committed = generation
        for width in self._widths(snapshot.layout):  # older generations (and uncommitted ones below it)
            self.client.delete(self._collection(width),
                               filter=f"store == {json.dumps(name)} and generation < {committed}")
        return committed

    def load(self, name: str) -> Snapshot:
        check_store_name(name)
        for _ in range(5):  # a save of another process may commit (and delete our generation) meanwhile
            snapshot, counts = self._load(name)
            found = self.connection.execute("SELECT generation FROM kv_stores WHERE name = ?", (name,)).fetchone()
            if found is not None and int(found[0]) == snapshot.generation:
                _check_counts(name, self.url, counts, snapshot.groups)
                return snapshot
        raise CorruptedFileError(f"the memory {name!r} in {redact(self.url)} changed under every load attempt: "
                                 "another process saves it without pause; retry")

    def _load(self, name: str) -> tuple[Snapshot, dict[str, int]]:
        self.connection.execute("BEGIN")  # one read snapshot of the generation and its records
        try:
            found = self.connection.execute("SELECT generation, layout, counts FROM kv_stores WHERE name = ? AND "
                                            "generation > 0", (name,)).fetchone()
            if found is None:
                raise FileNotFoundError(f"no memory named {name!r} is saved in {redact(self.url)}")
            records = [Record(*row) for row in self.connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM kv_records WHERE name = ? ORDER BY id", (name,))]
        finally:
            self.connection.execute("COMMIT")
        generation, layout, counts = int(found[0]), json.loads(found[1]), json.loads(found[2])
        rows: dict[str, list[tuple]] = {}
        fields = ["grp", "item", "key", "value", "hits", "sequence", "position"]
        for width in self._widths(layout):
            iterator = self.client.query_iterator(
                self._collection(width), batch_size=_MILVUS_BATCH, output_fields=fields,
                filter=f"store == {json.dumps(name)} and generation == {generation}")
            while batch := iterator.next():
                for hit in batch:
                    rows.setdefault(hit["grp"], []).append(
                        (hit["item"], np.asarray(hit["key"], dtype=np.float32), base64.b64decode(hit["value"]),
                         hit["hits"], hit["sequence"], hit["position"]))
            iterator.close()
        for items in rows.values():
            items.sort(key=lambda item: item[0])
        groups = {group: _group_state(group, items, layout) for group, items in rows.items()}
        return Snapshot(layout, generation, records, groups), counts

    def remove(self, name: str) -> bool:
        from memlm.store.sqlite import transaction

        check_store_name(name)
        with transaction(self.connection):
            found = self.connection.execute("SELECT layout FROM kv_stores WHERE name = ?", (name,)).fetchone()
            self.connection.execute("DELETE FROM kv_records WHERE name = ?", (name,))
            self.connection.execute("DELETE FROM kv_stores WHERE name = ?", (name,))
        if found is not None:
            for width in self._widths(json.loads(found[0])):
                self.client.delete(self._collection(width), filter=f"store == {json.dumps(name)}")
        return found is not None

    def names(self) -> list[str]:
        return [row[0] for row in self.connection.execute(
            "SELECT name FROM kv_stores WHERE generation > 0 ORDER BY name")]

    def close(self) -> None:
        self.client.close()
        self.connection.close()


# --- helpers -----------------------------------------------------------------------------------

def _value_bytes(value: np.ndarray) -> bytes:
    return np.asarray(value).tobytes()


def _group_state(group: str, items: list[tuple], layout: dict[str, Any]) -> GroupState:
    kind = group.split(".", 1)[0]
    spec = layout["specs"].get(kind)
    if spec is None:
        raise CorruptedFileError(f"a saved group {group!r} is of kind {kind!r}, which its layout does not hold")
    token_values = spec["value_dim"] is None
    dtype = np.int64 if token_values else np.float32
    try:
        ids = np.array([item[0] for item in items], dtype=np.int64)
        keys = np.stack([np.asarray(item[1].to_numpy() if hasattr(item[1], "to_numpy") else item[1],
                                    dtype=np.float32) for item in items])
        values = np.stack([np.frombuffer(item[2], dtype=dtype) for item in items])
        values = values.reshape(-1) if token_values else values
        hits = np.array([item[3] for item in items], dtype=np.int64)
        origins = np.array([[item[4], item[5]] for item in items], dtype=np.int64).reshape(-1, 2)
    except ValueError as error:
        raise CorruptedFileError(f"saved group {group!r} holds items of different widths ({error})") from error
    return GroupState(ids, keys, values, hits, origins)


def _check_counts(name: str, url: str, counts: dict[str, int], groups: dict[str, GroupState]) -> None:
    found = {group: len(state.ids) for group, state in groups.items()}
    if {g: n for g, n in counts.items() if n} != {g: n for g, n in found.items() if n}:
        raise CorruptedFileError(f"the memory {name!r} in {redact(url)} is incomplete: its vectors {found} do not "
                                 f"match the saved counts {counts}; save it again or remove it")


__all__ = ["GroupState", "KVBackend", "Snapshot", "check_store_name", "is_remote", "open_kv_backend"]
