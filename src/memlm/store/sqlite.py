"""What every memlm SQLite database shares: how it is opened, its meta table, transactions, copies.

Databases run in WAL mode with `synchronous=FULL` (a committed transaction survives power loss) and a
busy timeout, so several processes can write to one file: SQLite serialises the writers, readers
never block. Write transactions start with `BEGIN IMMEDIATE` so two writers never deadlock upgrading
read locks.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from memlm.errors import CorruptedFileError, StorageError, storage_error

META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
BUSY_TIMEOUT_S = 30


def connect(path: Path | None, schema: str, schema_version: int) -> sqlite3.Connection:
    """Open (or create) a database at `path` (`None`: in memory) holding `schema` plus `meta`.

    Raises `CorruptedFileError` if the file is not a usable SQLite database or was written by a newer
    memlm; a damaged file is never modified.
    """
    try:
        if path is not None and path.exists():
            with path.open("rb") as handle:
                header = handle.read(16)
            if header and header != b"SQLite format 3\x00":
                raise CorruptedFileError(f"{path} is not an SQLite database")
        connection = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None,
                                     check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        if path is not None:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(META_SCHEMA + schema)
        version = get_meta(connection, "schema_version")
        if version is None:
            set_meta(connection, "schema_version", schema_version)
        elif int(version) > schema_version:
            raise CorruptedFileError(f"{path} was written by a newer memlm (schema {version})")
        return connection
    except sqlite3.OperationalError as error:
        # Not damage: locked, read-only, no permission, disk full. Say so instead of "corrupted". (A file
        # that is not a database is SQLITE_NOTADB: a `DatabaseError`, below.)
        if path is not None and path.exists() and "decode" in str(error).lower():  # a stored text not UTF-8
            raise CorruptedFileError(f"{path} is damaged: it holds text that is not UTF-8 ({error})") from error
        raise storage_error(error, str(path)) from error
    except PermissionError as error:
        unreadable = path is not None and path.exists() and not os.access(path, os.R_OK)
        raise storage_error(error, str(path), "read" if unreadable else "write") from error
    except IsADirectoryError as error:
        raise StorageError(f"could not open {path}: it is a folder, not a database file; name a file inside "
                           "it (or remove the folder)") from error
    except sqlite3.DatabaseError as error:
        raise CorruptedFileError(f"{path} is not a usable SQLite database ({error})") from error
    except ValueError as error:  # damaged text: not UTF-8 (UnicodeDecodeError), or a meta value not JSON
        raise CorruptedFileError(f"{path} is damaged: it holds unreadable text ({error})") from error


def get_meta(connection: sqlite3.Connection, key: str) -> Any:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    try:
        return None if row is None else json.loads(row[0])
    except (ValueError, TypeError) as error:  # a damaged value: not JSON, not text
        raise CorruptedFileError(f"the database's meta value {key!r} is damaged ({error}); restore the file from "
                                 "a backup or delete it to start empty") from error


def set_meta(connection: sqlite3.Connection, key: str, value: Any) -> None:
    connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed on success, rolled back on any error."""
    lock = getattr(connection, "_lock", None)  # a shared connection (memlm.facts.store) is held throughout
    if lock is not None:
        with lock, _transaction(connection):
            yield connection
        return
    with _transaction(connection):
        yield connection


@contextmanager
def _transaction(connection: Any) -> Iterator[Any]:
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        raise storage_error(error, _name(connection)) from error
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException as error:
        if connection.in_transaction:
            with suppress(sqlite3.Error):  # SQLite may already have rolled back (e.g. after an I/O error)
                connection.execute("ROLLBACK")
        if isinstance(error, sqlite3.OperationalError):
            raise storage_error(error, _name(connection)) from error
        raise


def _name(connection: sqlite3.Connection) -> str:
    try:
        row = connection.execute("PRAGMA database_list").fetchone()
        return (row[2] if row and row[2] else "the in-memory database")
    except sqlite3.Error:
        return "the database"


def copy_database(connection: sqlite3.Connection, path: Path) -> None:
    """Write a consistent copy of the whole database to `path` (SQLite's online backup)."""
    target = sqlite3.connect(str(path))
    try:
        connection.backup(target)
    finally:
        target.close()
