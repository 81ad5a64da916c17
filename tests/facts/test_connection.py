"""The fact store's shared SQLite connection (`memlm.facts.connection`): each statement read in full under
the lock, and what goes wrong reported by kind: damage, a busy or full disk, a broken constraint."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from memlm.errors import CorruptedFileError, StorageError
from memlm.facts.connection import SerializedConnection


class LockSpy:
    """An RLock that records whether it was held when the connection ran a statement."""

    def __init__(self):
        self.lock, self.depth = threading.RLock(), 0

    def __enter__(self):
        self.lock.acquire()
        self.depth += 1

    def __exit__(self, *exc):
        self.depth -= 1
        self.lock.release()


@pytest.fixture
def shared(tmp_path):
    raw = sqlite3.connect(tmp_path / "facts.db", check_same_thread=False)
    raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, text TEXT UNIQUE)")
    connection = SerializedConnection(raw, threading.RLock())
    yield connection
    connection.close()


def test_statements_are_read_in_full_and_report_rows_ids_and_counts(shared):
    inserted = shared.execute("INSERT INTO t (text) VALUES ('a')")
    assert (inserted.lastrowid, inserted.rowcount, inserted.fetchall(), inserted.fetchone()) == (1, 1, [], None)
    many = shared.executemany("INSERT INTO t (text) VALUES (?)", [("b",), ("c",)])
    assert many.rowcount == 2 and many.fetchall() == []
    rows = shared.execute("SELECT id, text FROM t ORDER BY id")
    assert rows.fetchone() == (1, "a") and rows.fetchall() == [(1, "a"), (2, "b"), (3, "c")]
    assert list(rows) == [(1, "a"), (2, "b"), (3, "c")]  # read again: the rows are kept, not a cursor
    assert shared.in_transaction  # Python's sqlite3 opened one for the inserts
    shared.raw.commit()
    assert not shared.in_transaction
    shared.executescript("INSERT INTO t (text) VALUES ('d');")
    assert shared.execute("SELECT COUNT(*) FROM t").fetchone() == (4,)


def test_every_statement_runs_under_the_stores_lock(tmp_path):
    spy = LockSpy()
    raw = sqlite3.connect(tmp_path / "facts.db")
    seen = []
    raw.set_trace_callback(lambda statement: seen.append(spy.depth))
    connection = SerializedConnection(raw, spy)
    connection.execute("CREATE TABLE t (x)")
    connection.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    connection.executescript("SELECT 1;")
    assert seen and all(depth == 1 for depth in seen)
    connection.close()
    assert spy.depth == 0


def test_a_broken_constraint_stays_an_integrity_error(shared):
    shared.execute("INSERT INTO t (text) VALUES ('a')")
    with pytest.raises(sqlite3.IntegrityError):
        shared.execute("INSERT INTO t (text) VALUES ('a')")


def test_a_busy_or_read_only_file_is_a_storage_error_naming_it(shared, tmp_path):
    with pytest.raises(StorageError, match=str(tmp_path / "facts.db")):
        shared.execute("INSERT INTO missing_table VALUES (1)")  # an OperationalError that is not damage


def test_damage_is_a_corrupted_file_error_naming_the_file(tmp_path):
    class Damaged:  # a connection whose page reads fail as SQLite reports a damaged page
        def __init__(self, error):
            self.error, self.real = error, sqlite3.connect(tmp_path / "facts.db")

        def execute(self, sql, parameters=()):
            if sql.startswith("PRAGMA database_list"):
                return self.real.execute(sql)
            raise self.error

        executemany = execute

    for error, message in ((sqlite3.DatabaseError("database disk image is malformed"), "is damaged \\(database disk"),
                           (sqlite3.OperationalError("Could not decode to UTF-8 column 'text'"), "is damaged"),
                           (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                            "is damaged: it holds text that is not UTF-8")):
        connection = SerializedConnection(Damaged(error), threading.RLock())
        with pytest.raises(CorruptedFileError, match=f"^{tmp_path / 'facts.db'} {message}.*restore it from a backup"):
            connection.execute("SELECT 1")
        with pytest.raises(CorruptedFileError, match=f"^{tmp_path / 'facts.db'} {message}"):
            connection.executemany("INSERT INTO t VALUES (?)", [(1,)])


def test_a_damaged_file_that_cannot_even_list_itself_is_named_generically():
    class Unlisted:
        def execute(self, sql, parameters=()):
            raise sqlite3.DatabaseError("file is not a database")

    with pytest.raises(CorruptedFileError, match="^the fact store is damaged"):
        SerializedConnection(Unlisted(), threading.RLock()).execute("SELECT 1")


def test_a_backup_reaches_the_raw_connection_of_a_wrapped_target(shared):
    shared.execute("INSERT INTO t (text) VALUES ('a')")
    shared.raw.commit()
    target = SerializedConnection(sqlite3.connect(":memory:"), threading.RLock())
    shared.backup(target)
    assert target.execute("SELECT text FROM t").fetchall() == [("a",)]
    plain, progress = sqlite3.connect(":memory:"), []
    shared.backup(plain, pages=1, progress=lambda status, remaining, total: progress.append(total))
    assert progress  # the options reach SQLite's backup
    assert plain.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)
