"""KeyValueStore paths the backend tests reach only with a database server: `save_to`/`load_from`
through a backend (here an in-memory stand-in for PostgreSQL/Milvus, which stores the snapshot it is
given), and `stats`, `clear`, `close`, the typed errors of a store that parses but holds nonsense."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest
import torch
from kv_samples import filled, layout, same

import memlm.store.backends as backends
from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError, StorageError
from memlm.store import GroupSpec, KeyValueStore, RecordFilter, StoreLayout
from memlm.store.kv_store import RECORDS_FILE
from memlm.store.records import RecordStore

URL = "postgresql://memlm:secret@db.example/memories"


class InMemoryKV(backends.KVBackend):
    """What a database backend does with a snapshot: keep a copy per name, give it back on load."""

    saved: dict[str, backends.Snapshot] = {}
    opened: list[InMemoryKV] = []

    def __init__(self, url: str):
        assert url == URL, url  # the store opens the backend its caller named
        self.url, self.closed = url, False
        InMemoryKV.opened.append(self)

    def save(self, name, snapshot):
        generation = (self.saved[name].generation if name in self.saved else 0) + 1
        self.saved[name] = copy.deepcopy(snapshot)
        self.saved[name].generation = generation
        return generation

    def load(self, name):
        if name not in self.saved:
            raise FileNotFoundError(name)
        return copy.deepcopy(self.saved[name])

    def remove(self, name):
        return self.saved.pop(name, None) is not None

    def names(self):
        return sorted(self.saved)

    def close(self):
        self.closed = True


@pytest.fixture
def database(monkeypatch):
    InMemoryKV.saved, InMemoryKV.opened = {}, []
    monkeypatch.setattr(backends, "open_kv_backend", InMemoryKV)
    return InMemoryKV


def test_a_store_saved_to_a_database_loads_back_whole(database):
    store = filled("ada")
    store.add("attention", 3, 5, torch.randn(2, 2, 8), torch.randn(2, 2, 16), [{"text": "row 3"}] * 2)
    store.delete(RecordFilter(ids=[5]))  # a gap in the ids
    gone = store.add("attention", 0, 1, torch.randn(1, 2, 8), torch.randn(1, 2, 16), [{"text": "gone"}])
    store.delete(RecordFilter(ids=gone.tolist()))  # an emptied group, sorted before the others: not saved
    assert store.save_to(URL, "ada") == 1 and store.save_to(URL, "ada") == 2
    assert all(backend.closed for backend in database.opened) and len(database.opened) == 2
    snapshot = database.saved["ada"]
    assert sorted(snapshot.groups) == ["attention.0.3", "attention.0.5", "attention.1.3", "attention.1.5",
                                       "attention.3.5", "lm.0.-1"]
    lm = snapshot.groups["lm.0.-1"]  # keys flattened per item, token ids as values, hits and origins kept
    assert lm.keys.shape == (20, 12) and lm.values.tolist() == list(range(100, 120)) and lm.hits.sum() > 0
    attention = snapshot.groups["attention.1.5"]
    group = store.groups[("attention", 1, 5)]
    assert attention.keys.shape == (20, 16) and attention.values.shape == (20, 32)
    assert torch.equal(torch.from_numpy(attention.keys).view(20, 2, 8), group.keys.transpose(0, 1))
    assert torch.equal(torch.from_numpy(attention.values).view(20, 2, 16), group.values.transpose(0, 1))
    assert torch.equal(torch.from_numpy(attention.origins), group.origins)
    assert [r.id for r in snapshot.records] == store.records.ids()

    loaded = KeyValueStore.load_from(URL, "ada", expected_layout=layout())
    assert all(backend.closed for backend in database.opened) and len(database.opened) == 3
    same(store, loaded, emptied_dropped=True)
    assert loaded.layout == store.layout and loaded.row_count == 4
    assert loaded._records.generation == 2
    queries = torch.randn(2, 5, 8)
    assert store.search("attention", 0, 1, queries, 4) is None and ("attention", 0, 1) not in loaded.groups
    for key in loaded.groups:
        if key[0] == "attention":
            expected, got = store.search(*key, queries, 4), loaded.search(*key, queries, 4)
            assert torch.equal(expected.ids, got.ids) and torch.equal(expected.values, got.values)
    new = loaded.add("lm", 0, -1, torch.randn(1, 1, 12), torch.tensor([7]), [{"text": "late"}])
    assert int(new[0]) == max(store.records.ids()) + 1  # fresh ids continue after the saved ones

    half = KeyValueStore.load_from(URL, "ada", dtype=torch.float16)  # device and dtype are honoured
    assert half.groups[("attention", 0, 3)].keys.dtype == torch.float16
    half.add("attention", 7, 3, torch.randn(1, 2, 8), torch.randn(1, 2, 16), [{}])  # a new group: the same dtype
    assert half.groups[("attention", 7, 3)].keys.dtype == torch.float16


def test_a_database_memory_of_another_layout_or_damaged_is_refused(database):
    filled("ada").save_to(URL, "ada")
    other = StoreLayout({"attention": GroupSpec(2, 16, 32, "ip"), "lm": GroupSpec(1, 12, None, "l2")})
    with pytest.raises(IncompatibleMemoryError, match="'ada' in postgresql://memlm:\\*\\*\\*@db.example") as error:
        KeyValueStore.load_from(URL, "ada", expected_layout=other)
    assert "secret" not in str(error.value) and "another model" in str(error.value)
    assert database.opened[-1].closed
    database.saved["ada"].records.pop()  # a vector whose row is gone
    with pytest.raises(CorruptedFileError, match="1 vector\\(s\\) without a record row"):
        KeyValueStore.load_from(URL, "ada")
    with pytest.raises(FileNotFoundError):
        KeyValueStore.load_from(URL, "bob")
    assert database.opened[-1].closed


def test_an_empty_store_saves_and_loads_through_a_database(database):
    store = KeyValueStore(layout())
    store.add("lm", 0, -1, torch.randn(3, 1, 12), torch.arange(3), [{"text": "x"}] * 3)
    store.delete(RecordFilter())
    store.save_to(URL, "empty")
    assert database.saved["empty"].groups == {}  # an emptied group is not saved
    loaded = KeyValueStore.load_from(URL, "empty")
    assert len(loaded) == 0 and loaded.row_count == 0 and loaded.records.count() == 0


def test_stats_clear_and_close(tmp_path):
    store = KeyValueStore(StoreLayout({"attention": GroupSpec(2, 8, 8, "ip")}, capacity=100))
    for session, row, count in (("a", 0, 3), ("b", 1, 2)):
        store.add("attention", row, 2, torch.randn(count, 2, 8), torch.randn(count, 2, 8),
                  [{"session": session}] * count)
    stats = store.stats()
    assert stats["records"] == 5
    assert [(g["kind"], g["layer"], g["session"], g["records"]) for g in stats["groups"]] == [
        ("attention", 2, "a", 3), ("attention", 2, "b", 2)]
    assert stats["vectors"] == {"attention/row0/layer2": 3, "attention/row1/layer2": 2}
    assert (stats["backend"], stats["capacity"], stats["eviction"], stats["directory"]) == (
        "torch", 100, "oldest", None)
    assert json.dumps(stats)  # plain values
    store.save(tmp_path / "saved")
    assert store.stats()["directory"] == str(tmp_path / "saved")

    store.add("attention", 2, 0, torch.randn(4, 2, 8), torch.randn(4, 2, 8), [{}] * 4)  # still pending
    store.clear()
    assert len(store) == 0 and store.groups == {} and store.row_count == 0 and store.records.count() == 0
    assert store.stats()["vectors"] == {}
    ids = store.add("attention", 0, 0, torch.randn(1, 2, 8), torch.randn(1, 2, 8), [{}])
    assert store.records.ids() == ids.tolist()  # the rows cleared while pending were never written
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):  # its database is closed
        store._records.count()


def test_a_store_whose_saved_layout_is_nonsense_is_refused_as_damaged(tmp_path):
    store = KeyValueStore(layout())
    store.add("lm", 0, -1, torch.randn(2, 1, 12), torch.arange(2), [{}] * 2)
    store.save(tmp_path)
    records = RecordStore(tmp_path / RECORDS_FILE)
    records.set_meta("layout", {"specs": "not specs"})
    records.close()
    with pytest.raises(CorruptedFileError, match=rf"the memory store in {tmp_path} is damaged \(\w+Error: .*\); "
                       "restore it from a backup or delete it to start empty"):
        KeyValueStore.load(tmp_path)


@pytest.mark.parametrize("message", ["database is locked", "database table is busy",
                                     "attempt to write a readonly database", "database or disk is full",
                                     "unable to open database file", "disk I/O error"])
def test_a_store_sqlite_cannot_use_now_is_a_storage_error_not_damaged(tmp_path, monkeypatch, message):
    store = KeyValueStore(layout())
    store.add("lm", 0, -1, torch.randn(2, 1, 12), torch.arange(2), [{}] * 2)
    store.save(tmp_path)

    def fails(self):
        raise sqlite3.OperationalError(message)

    monkeypatch.setattr(RecordStore, "roll_back_uncommitted", fails)
    # "disk I/O error" is damage (of the file or the disk); the others are a state that passes or can be fixed
    expected = CorruptedFileError if message == "disk I/O error" else StorageError
    with pytest.raises(expected, match=message) as error:
        KeyValueStore.load(tmp_path)
    assert isinstance(error.value, CorruptedFileError) or str(tmp_path / RECORDS_FILE) in str(error.value)
    monkeypatch.undo()
    assert KeyValueStore.load(tmp_path).records.count() == 2  # nothing was changed by the refused load


def test_the_one_entry_point_reaches_a_database_as_it_reaches_a_directory(database, tmp_path):
    from memlm.store import load_store, remove_store, save_store

    ada = filled("ada")
    for location in (URL, str(tmp_path)):
        save_store(ada, location, "ada")
        loaded = load_store(location, "ada", dtype=torch.float16, expected_layout=layout())
        assert loaded.groups[("attention", 0, 3)].keys.dtype == torch.float16
        loaded.add("lm", 5, -1, torch.randn(1, 1, 12), torch.arange(1), [{}])  # a new group: the same dtype
        assert loaded.groups[("lm", 5, -1)].keys.dtype == torch.float16
        assert torch.equal(loaded.groups[("attention", 0, 3)].ids, ada.groups[("attention", 0, 3)].ids)
        with pytest.raises(IncompatibleMemoryError, match="another model"):
            load_store(location, "ada", expected_layout=layout(width=16))
        with pytest.raises(ConfigError, match="name"):
            load_store(location, "../ada")
        with pytest.raises(ConfigError, match="name"):
            remove_store(location, "ada/")
        assert remove_store(location, "ada") and not remove_store(location, "ada")
        with pytest.raises(FileNotFoundError):
            load_store(location, "ada")
    assert sorted(database.saved) == [] and all(backend.closed for backend in database.opened)


def test_a_snapshot_holds_float32_keys_whatever_the_store_dtype_and_only_a_torch_index_has_one(database):
    store = KeyValueStore(layout(), dtype=torch.float16)
    store.add("attention", 0, 0, torch.randn(3, 2, 8), torch.randn(3, 2, 16), [{}] * 3)
    store.save_to(URL, "half")
    assert store.groups[("attention", 0, 0)].keys.dtype == torch.float16  # kept in the store's dtype
    state = database.saved["half"].groups["attention.0.0"]
    assert state.keys.dtype == state.values.dtype == "float32" and state.keys.shape == (3, 16)
    faiss = KeyValueStore(StoreLayout({"lm": GroupSpec(1, 4, None, "l2")}, backend="faiss-flat"))
    with pytest.raises(ConfigError, match="a store with the faiss-flat index can only be saved in a directory; "
                       "use the torch backend to save it in PostgreSQL or Milvus"):
        faiss.save_to(URL, "ada")


def test_items_keep_the_fields_of_their_records_and_the_defaults_of_missing_ones():
    store = KeyValueStore(layout())
    assert store.row_count == 0
    store.add("lm", 2, -1, torch.randn(3, 1, 12), torch.arange(3),
              [{"sequence": 4, "position": 7, "token": 5, "length": 3, "text": "t", "context": "c"},
               {"position": 2}, {}])
    assert store.row_count == 3  # rows 0..2 may hold items
    assert store.groups[("lm", 2, -1)].origins.tolist() == [[4, 7], [0, 2], [0, 0]]
    assert [(r.sequence, r.position, r.token, r.length, r.text, r.context) for r in store.records.select()] == [
        (4, 7, 5, 3, "t", "c"), (0, 2, -1, 1, "", ""), (0, 0, -1, 1, "", "")]


@pytest.mark.parametrize("flush", [False, True])
def test_eviction_across_pending_and_written_rows_leaves_exactly_the_newest(flush):
    store = KeyValueStore(StoreLayout({"lm": GroupSpec(1, 4, None, "l2")}, capacity=15))
    for batch in range(3):  # rows are written lazily: evicted items may be pending or already written
        store.add("lm", 0, -1, torch.randn(10, 1, 4), torch.arange(10), [{"position": i} for i in range(10)])
        if flush and batch == 0:
            assert store.records.count() == 10
    assert store.records.ids() == list(range(16, 31)) and len(store) == 15
    assert store.groups[("lm", 0, -1)].ids.tolist() == list(range(16, 31))


def test_missing_or_emptied_groups_are_searched_as_nothing():
    store = KeyValueStore(layout())
    assert store.group("lm", 0, -1) is None and store.search("lm", 0, -1, torch.randn(1, 2, 12), 3) is None
    assert store.delete(RecordFilter(session="nobody")) == 0
    store.add("lm", 0, -1, torch.randn(2, 1, 12), torch.arange(2), [{"session": "s"}] * 2)
    assert store.search("lm", 0, -1, torch.randn(1, 2, 12), 3).ids.shape == (1, 2, 3)
    assert store.delete(RecordFilter(session="s")) == 2
    assert store.group("lm", 0, -1) is None and store.search("lm", 0, -1, torch.randn(1, 2, 12), 3) is None


def test_a_directory_keeps_only_the_committed_generation_and_refuses_one_that_does_not_match(tmp_path):
    from memlm.serialization import load_tensors, save_tensors

    store = KeyValueStore(layout())
    store.add("lm", 0, -1, torch.randn(2, 1, 12), torch.arange(2), [{}] * 2)
    store.add("lm", 2, -1, torch.randn(2, 1, 12), torch.arange(2), [{}] * 2)
    store.save(tmp_path)
    first = (tmp_path / "vectors-000001.safetensors").read_bytes()
    store.save(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("vectors-*")) == ["vectors-000002.safetensors"]
    assert KeyValueStore.load(tmp_path).row_count == 3

    (tmp_path / "vectors-000002.safetensors").write_bytes(first)  # the same items, but generation 1's file
    with pytest.raises(CorruptedFileError, match="vectors-000002.safetensors is not generation 2 of a memlm store"):
        KeyValueStore.load(tmp_path)
    arrays, metadata = load_tensors(tmp_path / "vectors-000002.safetensors")
    save_tensors(tmp_path / "vectors-000002.safetensors", arrays, {**metadata, "generation": 2,
                                                                     "groups": [*metadata["groups"], ["bogus", 0, 0]]})
    with pytest.raises(CorruptedFileError, match="holds a group of unknown kind 'bogus'"):
        KeyValueStore.load(tmp_path)

    empty = KeyValueStore(layout())
    empty.save(tmp_path / "empty")
    reopened = KeyValueStore.load(tmp_path / "empty")
    assert len(reopened) == 0 and reopened.row_count == 0


def test_a_store_never_saved_or_without_its_layout_is_not_a_store(tmp_path):
    RecordStore(tmp_path / RECORDS_FILE).close()  # a process killed before its first save committed
    with pytest.raises(CorruptedFileError, match=f"{tmp_path / RECORDS_FILE} has never been committed by a save"):
        KeyValueStore.load(tmp_path)
    store = KeyValueStore(layout())
    store.add("lm", 0, -1, torch.randn(2, 1, 12), torch.arange(2), [{}] * 2)
    store.save(tmp_path / "saved")
    with sqlite3.connect(tmp_path / "saved" / RECORDS_FILE) as connection:
        connection.execute("DELETE FROM meta WHERE key = 'layout'")
    with pytest.raises(CorruptedFileError, match="has never been committed by a save"):
        KeyValueStore.load(tmp_path / "saved")


def test_adding_to_an_unknown_kind_or_with_counts_that_differ_is_refused_and_nothing_adds_nothing():
    store = KeyValueStore(layout())
    with pytest.raises(ConfigError, match=r"this store holds kinds \['attention', 'lm'\], not 'bogus'"):
        store.add("bogus", 0, 0, torch.randn(1, 1, 12), torch.arange(1), [{}])
    with pytest.raises(ConfigError, match="3 vectors but 2 records"):
        store.add("lm", 0, -1, torch.randn(3, 1, 12), torch.arange(3), [{}] * 2)
    with pytest.raises(ConfigError, match="3 vectors but 3 records"):  # a layer with fewer keys than records
        store.add("attention", 0, [0, 1], [torch.randn(3, 2, 8), torch.randn(2, 2, 8)],
                  [torch.randn(3, 2, 16), torch.randn(2, 2, 16)], [{}] * 3)
    assert len(store) == 0 and store.records.count() == 0
    none = store.add("lm", 0, -1, torch.randn(0, 1, 12), torch.arange(0), [])
    assert none.dtype == torch.int64 and none.shape == (0,) and len(store) == 0 and store.row_count == 0
    # two layers named, keys and values for one; or values for fewer items than keys: refused before
    # anything is written (the store is left as it was, not half-written)
    with pytest.raises(ConfigError, match=r"2 layer\(s\) named but keys for 1 and values for 1"):
        store.add("attention", 0, [0, 1], [torch.randn(3, 2, 8)], [torch.randn(3, 2, 16)], [{}] * 3)
    with pytest.raises(ConfigError, match="3 vectors but 3 records"):
        store.add("attention", 0, [0, 1], [torch.randn(3, 2, 8)] * 2, [torch.randn(3, 2, 16), torch.randn(2, 2, 16)],
                  [{}] * 3)
    assert len(store) == 0 and not store.groups and store.records.count() == 0
