"""What every memlm SQLite database shares (`memlm.store.sqlite`): how a file is opened (WAL, full
sync, busy timeout, schema version), which error each kind of bad file gives, the meta table,
transactions and online copies."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from memlm.errors import CorruptedFileError, StorageError
from memlm.store import sqlite as db

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "notes.sqlite"


def open_db(path, version=1):
    return db.connect(path, SCHEMA, version)


def test_a_new_file_is_created_with_its_schema_wal_full_sync_and_a_30_s_busy_timeout(path):
    connection = open_db(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_S * 1000 == 30_000
    assert connection.isolation_level is None  # memlm opens its transactions itself (BEGIN IMMEDIATE)
    connection.execute("INSERT INTO notes (text) VALUES ('kept')")  # autocommit: seen at once elsewhere
    other = sqlite3.connect(path)
    assert other.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    assert other.execute("SELECT key, value FROM meta").fetchall() == [("schema_version", "1")]


def test_an_in_memory_database_has_the_schema_and_its_version(path):
    connection = db.connect(None, SCHEMA, 3)
    assert db.get_meta(connection, "schema_version") == 3
    assert connection.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    assert db._name(connection) == "the in-memory database"


def test_a_connection_may_be_used_from_another_thread(path):
    connection = open_db(path)
    errors = []

    def write():
        try:
            connection.execute("INSERT INTO notes (text) VALUES ('from a thread')")
        except Exception as error:  # noqa: BLE001 - the failure the test looks for
            errors.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert errors == [] and connection.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_reopening_keeps_the_version_an_older_file_opens_a_newer_one_is_refused(path):
    open_db(path, 2).close()
    assert db.get_meta(open_db(path, 2), "schema_version") == 2  # the same version: opens
    assert db.get_meta(open_db(path, 5), "schema_version") == 2  # written by an older memlm: opens, kept
    with pytest.raises(CorruptedFileError, match=r"newer memlm \(schema 2\)"):
        open_db(path, 1)


def test_an_empty_file_is_a_new_database(path):
    path.write_bytes(b"")
    assert db.get_meta(open_db(path), "schema_version") == 1


@pytest.mark.parametrize("content", [b"not a database at all, just text", b"SQLite format 2\x00" + b"\x00" * 100])
def test_a_file_that_is_not_sqlite_is_refused_and_left_as_it_was(path, content):
    path.write_bytes(content)
    with pytest.raises(CorruptedFileError, match="is not an SQLite database"):
        open_db(path)
    assert path.read_bytes() == content


def test_a_sqlite_header_over_garbage_is_refused_as_unusable(path):
    content = b"SQLite format 3\x00" + bytes(range(256)) * 16
    path.write_bytes(content)
    with pytest.raises(CorruptedFileError, match="is not a usable SQLite database"):
        open_db(path)
    assert path.read_bytes() == content


def test_text_that_is_not_utf8_in_the_meta_table_is_damage_not_a_storage_error(path):
    open_db(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = CAST(x'22ff22' AS TEXT) WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(CorruptedFileError, match="not UTF-8|unreadable text"):
        open_db(path)


def test_a_meta_value_that_is_not_json_is_damage_naming_the_key(path):
    connection = open_db(path)
    connection.execute("INSERT INTO meta (key, value) VALUES ('dimension', '{not json')")
    with pytest.raises(CorruptedFileError, match="meta value 'dimension' is damaged .*restore the file from a "
                                                 "backup or delete it to start empty"):
        db.get_meta(connection, "dimension")
    connection.execute("UPDATE meta SET value = 'x' WHERE key = 'schema_version'")
    with pytest.raises(CorruptedFileError, match="meta value 'schema_version' is damaged"):
        open_db(path)  # the same damage met while opening
    connection.execute("""UPDATE meta SET value = '"two"' WHERE key = 'schema_version'""")
    with pytest.raises(CorruptedFileError, match="unreadable text"):
        open_db(path)  # JSON, but not a version number


def test_meta_values_round_trip_as_json_and_a_second_set_replaces_the_first(path):
    connection = open_db(path)
    assert db.get_meta(connection, "missing") is None
    db.set_meta(connection, "model", {"name": "tiny", "layers": [1, 2]})
    db.set_meta(connection, "model", {"name": "other"})
    assert db.get_meta(connection, "model") == {"name": "other"}
    assert connection.execute("SELECT value FROM meta WHERE key = 'model'").fetchone() == ('{"name": "other"}',)


def test_a_folder_that_does_not_exist_is_a_storage_error_not_damage(tmp_path):
    with pytest.raises(StorageError, match="could not write .*missing.*cannot be written here"):
        open_db(tmp_path / "missing" / "notes.sqlite")


def test_a_file_that_may_not_be_read_is_a_read_error(path, monkeypatch):
    open_db(path).close()
    monkeypatch.setattr(db.os, "access", lambda *args: False)  # tests run as root, who may read anything
    monkeypatch.setattr(type(path), "open", lambda *args, **kwargs: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")))
    with pytest.raises(StorageError, match=f"could not read {path}: permission denied"):
        open_db(path)


def test_a_file_that_may_be_read_but_not_written_is_a_write_error(path, monkeypatch):
    open_db(path).close()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(db.sqlite3, "connect", refuse)
    with pytest.raises(StorageError, match=f"could not write {path}: .*permission"):
        open_db(path)


def test_a_file_locked_by_another_process_is_a_storage_error_not_damage(path, monkeypatch):
    holder = sqlite3.connect(path, isolation_level=None)  # a rollback-journal file another writer holds
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.05)  # switching it to WAL needs the lock: wait briefly
    with pytest.raises(StorageError, match=f"could not write {path}: another process holds its write lock"):
        open_db(path)
    holder.execute("ROLLBACK")
    assert db.get_meta(open_db(path), "schema_version") == 1  # nothing was damaged: it opens once free


def test_a_folder_in_place_of_the_file_is_a_storage_error(path):
    path.mkdir()
    with pytest.raises(StorageError,
                       match=r"it is a folder, not a database file; name a file inside it \(or remove the folder\)"):
        open_db(path)


def test_a_transaction_commits_what_its_body_wrote(path):
    connection = open_db(path)
    with db.transaction(connection) as inside:
        assert inside is connection and connection.in_transaction
        connection.execute("INSERT INTO notes (text) VALUES ('a')")
    assert not connection.in_transaction
    assert sqlite3.connect(path).execute("SELECT text FROM notes").fetchall() == [("a",)]


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt()])
def test_a_transaction_whose_body_raises_is_rolled_back_and_the_error_goes_on(path, error):
    connection = open_db(path)
    with pytest.raises(type(error)), db.transaction(connection):
        connection.execute("INSERT INTO notes (text) VALUES ('lost')")
        raise error
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_an_operational_error_inside_a_transaction_is_a_storage_error_naming_the_file(path):
    connection = open_db(path)
    with pytest.raises(StorageError, match=f"could not write {path}"), db.transaction(connection):
        connection.execute("INSERT INTO notes (text) VALUES ('lost')")
        connection.execute("INSERT INTO no_such_table VALUES (1)")
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_an_error_after_sqlite_rolled_back_by_itself_is_still_the_callers_error(path):
    connection = open_db(path)
    with pytest.raises(RuntimeError, match="after the rollback"), db.transaction(connection):
        connection.execute("ROLLBACK")  # as SQLite does after some I/O errors
        raise RuntimeError("after the rollback")
    assert not connection.in_transaction


def test_a_transaction_that_cannot_begin_is_a_storage_error(path):
    connection = open_db(path)
    connection.execute("BEGIN")
    with pytest.raises(StorageError, match=f"could not write {path}"), db.transaction(connection):
        pytest.fail("the body ran without its transaction")


def test_a_shared_connection_is_held_under_its_lock_for_the_whole_transaction(path):
    class Shared:  # memlm.facts.store's SerializedConnection: a connection and the lock its users share
        def __init__(self, connection):
            self.connection, self._lock = connection, threading.Lock()

        def execute(self, *args):
            return self.connection.execute(*args)

        @property
        def in_transaction(self):
            return self.connection.in_transaction

    shared = Shared(open_db(path))
    with db.transaction(shared):
        assert shared._lock.locked()
        shared.execute("INSERT INTO notes (text) VALUES ('under the lock')")
    assert not shared._lock.locked()
    assert shared.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_a_connection_that_cannot_say_its_file_is_the_database(path):
    connection = open_db(path)
    assert db._name(connection) == str(path)
    connection.close()
    assert db._name(connection) == "the database"


def test_copy_database_writes_a_whole_consistent_copy(path, tmp_path):
    connection = open_db(path)
    connection.execute("INSERT INTO notes (text) VALUES ('copied')")
    db.set_meta(connection, "owner", "ada")
    copy = tmp_path / "copy.sqlite"
    db.copy_database(connection, copy)
    copied = open_db(copy)
    assert copied.execute("SELECT text FROM notes").fetchall() == [("copied",)]
    assert db.get_meta(copied, "owner") == "ada"
