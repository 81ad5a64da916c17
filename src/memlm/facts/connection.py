"""One SQLite connection shared safely by the threads of a fact store, and damage reported as damage."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from memlm.errors import storage_error


class _Rows:
    """A statement's result, read in full while the connection was held."""

    def __init__(self, rows: list[tuple], lastrowid: int | None, rowcount: int):
        self.rows, self.lastrowid, self.rowcount = rows, lastrowid, rowcount

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return list(self.rows)


@contextlib.contextmanager
def _damage_is_typed(connection: sqlite3.Connection) -> Iterator[None]:
    """A damaged file can pass `connect` and fail later, on the page a query reads: report that as
    `CorruptedFileError` (integrity violations and lock / disk errors keep their own handling)."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.DatabaseError as error:
        from memlm.errors import CorruptedFileError

        name = next((row[2] for row in _safe_list(connection)), "the fact store")
        if isinstance(error, sqlite3.OperationalError) and "decode" not in str(error).lower():
            raise storage_error(error, name) from error  # locked, disk full, read-only: not damage
        raise CorruptedFileError(f"{name} is damaged ({error}); restore it from a backup") from error
    except UnicodeDecodeError as error:  # memlm writes only UTF-8: a row (or SQLite's report of a page) that is not
        from memlm.errors import CorruptedFileError

        name = next((row[2] for row in _safe_list(connection)), "the fact store")
        raise CorruptedFileError(f"{name} is damaged: it holds text that is not UTF-8 ({error}); restore it from a "
                                 "backup") from error


def _safe_list(connection: sqlite3.Connection) -> list[tuple]:
    try:
        return connection.execute("PRAGMA database_list").fetchall()
    except sqlite3.Error:
        return []


class SerializedConnection:
    """One SQLite connection shared by threads, used by one thread at a time (the store's lock), each
    statement read to the end before the lock is released.

    Sharing the bare connection let one thread's unfinished SELECT keep a read snapshot open while
    another thread began a write transaction on the same connection; in WAL mode SQLite then
    answers "database is locked" at once (a stale snapshot cannot be upgraded), without waiting."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.RLock):
        self.raw, self._lock = connection, lock

    def execute(self, sql: str, parameters: Any = ()) -> _Rows:
        with self._lock, _damage_is_typed(self.raw):
            cursor = self.raw.execute(sql, parameters)
            rows = cursor.fetchall() if cursor.description is not None else []
            return _Rows(rows, cursor.lastrowid, cursor.rowcount)

    def executemany(self, sql: str, parameters: Any) -> _Rows:
        with self._lock, _damage_is_typed(self.raw):
            cursor = self.raw.executemany(sql, parameters)
            return _Rows([], cursor.lastrowid, cursor.rowcount)

    def executescript(self, script: str) -> None:
        with self._lock:
            self.raw.executescript(script)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def backup(self, target: Any, **kwargs: Any) -> None:
        with self._lock:
            self.raw.backup(getattr(target, "raw", target), **kwargs)

    def close(self) -> None:
        with self._lock:
            self.raw.close()

