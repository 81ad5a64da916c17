"""The provenance records' SQLite table (`memlm.store.records`): every filter field, paging and order,
generations (uncommitted rows, deletions, roll-back, commit), statistics and the JSON-lines export."""

from __future__ import annotations

import json

import pytest

from memlm.store.records import Record, RecordFilter, RecordStore, _iso


def record(id: int, **fields) -> Record:
    values = {"kind": "attention", "layer": 0, "user": "ada", "session": "s1", "sequence": 1, "row": 0,
              "position": id, "token": 100 + id, "length": 1, "text": f"text {id}", "created": 1_000_000.0 + id,
              "context": ""}
    return Record(id, **{**values, **fields})


@pytest.fixture
def store():
    store = RecordStore()
    store.insert([record(1), record(2, user="bob", session="s2", sequence=2),
                  record(3, kind="lm", layer=-1, text="100% sure_thing", context="he said 100% sure_thing"),
                  record(4, text="back\\slash", session="s2"), record(5, text="Zebra", context="a striped Zebra")])
    yield store
    store.close()


def ids(records) -> list[int]:
    return [r.id for r in records]


@pytest.mark.parametrize("where, expected", [
    (RecordFilter(), [1, 2, 3, 4, 5]),
    (RecordFilter(ids=[2, 4, 9]), [2, 4]), (RecordFilter(ids=[]), []),
    (RecordFilter(user="bob"), [2]), (RecordFilter(session="s2"), [2, 4]), (RecordFilter(sequence=2), [2]),
    (RecordFilter(kind="lm"), [3]), (RecordFilter(layer=-1), [3]), (RecordFilter(layer=0), [1, 2, 4, 5]),
    (RecordFilter(text="zebra"), [5]),  # case-insensitive
    (RecordFilter(text="striped"), [5]),  # matches the context too
    # % and _ are literal, not wildcards
    (RecordFilter(text="100%"), [3]), (RecordFilter(text="0%"), [3]), (RecordFilter(text="t%1"), []),
    (RecordFilter(text="t_1"), []), (RecordFilter(text="sure_"), [3]), (RecordFilter(text="%"), [3]),
    (RecordFilter(text="k\\s"), [4]),  # a backslash is literal too
    (RecordFilter(session="s2", text="back"), [4]), (RecordFilter(user="ada", session="s2", kind="lm"), []),
])
def test_every_filter_field_selects_exactly_its_records(store, where, expected):
    assert ids(store.select(where)) == expected
    assert sorted(store.ids(where)) == expected and store.count(where) == len(expected)
    assert ids(store.iterate(where, batch=2)) == expected


def test_records_come_back_whole_with_the_text_as_default_context(store):
    first = store.select(RecordFilter(ids=[1]))[0]
    assert first == record(1, context="text 1")  # an empty context is stored as the span's text
    assert first.to_dict()["created"] == 1_000_001.0 and first.to_dict()["token"] == 101
    assert store.select(RecordFilter(ids=[3]))[0].context == "he said 100% sure_thing"


def test_paging_and_order(store):
    assert ids(store.select(limit=2)) == [1, 2] and ids(store.select(limit=2, offset=2)) == [3, 4]
    assert ids(store.select(limit=10, offset=4)) == [5]
    assert ids(store.select(newest_first=True)) == [5, 4, 3, 2, 1]
    assert ids(store.select(newest_first=True, limit=2, offset=1)) == [4, 3]
    assert ids(store.iterate(batch=1)) == [1, 2, 3, 4, 5]


def test_next_id_follows_the_largest_id():
    store = RecordStore()
    assert store.next_id() == 1
    store.insert([record(7)])
    assert store.next_id() == 8


def test_generations_roll_back_what_no_save_committed(store):
    assert store.generation == 0
    store.commit_generation(1, {"note": "first save"})
    assert store.generation == 1 and store.get_meta("note") == "first save"
    store.insert([record(6)])  # written after the save: uncommitted
    store.mark_deleted([1, 2])  # deleted after the save: hidden, not yet gone
    assert ids(store.select()) == [3, 4, 5, 6] and store.count() == 4
    assert store.roll_back_uncommitted() == 1  # the one uncommitted row
    assert ids(store.select()) == [1, 2, 3, 4, 5]  # the deletions are undone
    store.mark_deleted([1])
    store.insert([record(6)])
    store.commit_generation(2)
    assert store.generation == 2 and ids(store.select()) == [2, 3, 4, 5, 6]
    assert store.roll_back_uncommitted() == 0 and ids(store.select()) == [2, 3, 4, 5, 6]
    assert store.connection.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 5  # the deleted row is gone


def test_stats_group_by_kind_layer_and_session(store):
    store.mark_deleted([5])
    stats = store.stats()
    assert stats["records"] == 4
    assert stats["groups"] == [
        {"kind": "attention", "layer": 0, "session": "s1", "records": 1, "oldest": _iso(1_000_001.0),
         "newest": _iso(1_000_001.0)},
        {"kind": "attention", "layer": 0, "session": "s2", "records": 2, "oldest": _iso(1_000_002.0),
         "newest": _iso(1_000_004.0)},
        {"kind": "lm", "layer": -1, "session": "s1", "records": 1, "oldest": _iso(1_000_003.0),
         "newest": _iso(1_000_003.0)}]
    assert _iso(0.0) == "1970-01-01T00:00:00Z" and _iso(86_400 + 3661.5) == "1970-01-02T01:01:01Z"
    assert _iso(None) is None


def test_export_writes_matching_records_as_json_lines(store, tmp_path):
    path = tmp_path / "out.jsonl"
    assert store.export_jsonl(path, RecordFilter(session="s2")) == 2
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and [json.loads(line) for line in lines[:-1]] == [
        r.to_dict() for r in store.select(RecordFilter(session="s2"))]
    store.insert([record(6, text="café ☕")])
    assert store.export_jsonl(path, RecordFilter(ids=[6])) == 1
    assert "café ☕" in path.read_text(encoding="utf-8")  # not escaped
    assert store.export_jsonl(path, RecordFilter(user="nobody")) == 0 and path.read_bytes() == b""


def test_a_copy_holds_the_same_rows_and_meta(store, tmp_path):
    store.commit_generation(3, {"layout": {"a": 1}})
    store.copy_to(tmp_path / "copy.sqlite")
    copy = RecordStore(tmp_path / "copy.sqlite")
    assert copy.select() == store.select() and copy.generation == 3 and copy.get_meta("layout") == {"a": 1}
    copy.close()


def test_the_schema_version_is_recorded_and_a_newer_one_refused(tmp_path):
    import memlm
    from memlm.store.records import SCHEMA_VERSION

    store = RecordStore(tmp_path / "records.sqlite")
    assert store.get_meta("schema_version") == SCHEMA_VERSION
    store.set_meta("schema_version", SCHEMA_VERSION + 1)  # as a newer memlm would leave it
    store.close()
    with pytest.raises(memlm.CorruptedFileError, match="newer memlm"):
        RecordStore(tmp_path / "records.sqlite")
