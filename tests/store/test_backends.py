"""The key/value store's persistence on every backend: a directory (SQLite + safetensors), PostgreSQL +
pgvector and Milvus (real servers the tests start, `tests/stores.py`): round trip, isolation between
memories, remove, typed errors, a writer killed during saves, concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from kv_samples import filled, layout, same
from stores import store_url

from memlm.errors import ConfigError, IncompatibleMemoryError
from memlm.store import GroupSpec, KeyValueStore, RecordFilter, StoreLayout, load_store, remove_store, save_store

KV_BACKENDS = ["sqlite", "postgres", "milvus"]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def kv_location(kind: str, tmp_path: Path, servers: Path) -> str:
    if kind == "sqlite":
        return str(tmp_path / "memories")
    return store_url(kind, tmp_path, servers / "postgres")


@pytest.fixture(params=KV_BACKENDS)
def location(request, tmp_path, _store_servers) -> str:
    return kv_location(request.param, tmp_path, _store_servers)


def test_round_trip_isolation_and_remove(location):
    ada, bob = filled("ada"), filled("bob", items=7, seed=1)
    save_store(ada, location, "ada")
    save_store(bob, location, "bob")
    loaded = load_store(location, "ada", expected_layout=layout())
    same(ada, loaded)
    assert {r.user for r in loaded.records.select()} == {"ada"}
    # the loaded store answers searches as the saved one did, and keeps allocating fresh ids
    queries = torch.randn(2, 5, 8)
    assert torch.equal(ada.search("attention", 1, 5, queries, 4).ids, loaded.search("attention", 1, 5, queries, 4).ids)
    new = loaded.add("lm", 0, -1, torch.randn(1, 1, 12), torch.tensor([7]), [{"user": "ada", "text": "late"}])
    assert int(new[0]) > max(r.id for r in ada.records.select())
    # a save replaces the name's state (deleted items stay deleted); bob is untouched
    loaded.delete(RecordFilter(sequence=2))
    save_store(loaded, location, "ada")
    again = load_store(location, "ada")
    same(loaded, again)
    assert again.records.count(RecordFilter(sequence=2)) == 0 and again.records.count(RecordFilter(text="late")) == 1
    same(bob, load_store(location, "bob"))
    assert remove_store(location, "ada") and not remove_store(location, "ada")
    with pytest.raises(FileNotFoundError, match="ada"):
        load_store(location, "ada")
    same(bob, load_store(location, "bob"))


def test_another_models_memory_is_refused(location):
    ada = filled("ada")
    save_store(ada, location, "ada")
    with pytest.raises(IncompatibleMemoryError, match="another model"):
        load_store(location, "ada", expected_layout=layout(width=16))
    if not location.startswith(("postgresql", "milvus")):
        return  # a directory is replaced whole by a save
    with pytest.raises(IncompatibleMemoryError, match="remove it first"):
        save_store(filled("ada", width=16), location, "ada")
    same(ada, load_store(location, "ada"))  # the refused save changed nothing


def test_bad_locations_are_typed_errors(tmp_path):
    store = filled("ada", items=2)
    with pytest.raises(ConfigError, match="no key/value store backend for redis"):
        save_store(store, "redis://host/0", "ada")
    for name in ("../escape", "ada\n", "ada/"):  # `$` alone would pass "ada\n" (a newline in a folder name)
        with pytest.raises(ConfigError, match="name"):
            save_store(store, str(tmp_path), name)
    with pytest.raises(ConfigError, match="cannot reach the PostgreSQL store"):
        save_store(store, "postgresql://memlm:secret@127.0.0.1:1/db?connect_timeout=3", "ada")
    with pytest.raises(ConfigError, match="torch backend"):
        KeyValueStore(StoreLayout({"lm": GroupSpec(1, 4, None, "l2")}, backend="faiss-flat")).save_to(
            "postgresql://127.0.0.1:1/db", "ada")


WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_backends import filled
    from memlm.store import save_store
    location, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = filled(name, items=3, seed=hash(name) % 1000)
    for round in range(rounds):
        store.add("lm", 0, -1, torch.randn(5, 1, 12), torch.arange(5), [{{"user": name, "text": f"r{{round}}"}}] * 5)
        save_store(store, location, name)
        print(len(store.records.ids()), flush=True)  # acknowledged: this many records are saved
""")


def writer(location: str, name: str, rounds: int) -> subprocess.Popen:
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, tests, str(Path(tests).parent)]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WRITER.format(tests=tests), location, name, str(rounds)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_writer_killed_during_saves_loses_no_acknowledged_save(location):
    process = writer(location, "ada", 10_000)
    acknowledged = [int(process.stdout.readline())]
    time.sleep(0.5)  # mid-stream: saves follow each other without pause
    process.send_signal(signal.SIGKILL)
    process.wait()
    acknowledged += [int(line) for line in process.stdout.read().split()]
    store = load_store(location, "ada")  # checks that rows and vectors match
    count = len(store.records.ids())
    assert count >= acknowledged[-1]  # every acknowledged save is there (one more may have committed)
    assert count in {acknowledged[-1], acknowledged[-1] + 5}
    assert count == len(store.groups[("lm", 0, -1)]) + 2 * 3  # lm items + 3 attention items in each of 2 rows


def test_concurrent_writers(location):
    # Different memories from several processes at once; on the database backends also two processes
    # saving the same memory (a directory has one writing process: its records file is the live store).
    remote = location.startswith(("postgresql", "milvus"))
    names = ("ada", "bob", "ada") if remote else ("ada", "bob")
    processes = [writer(location, name, 6) for name in names]
    outputs = [process.communicate(timeout=240)[0].split() for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    bob = load_store(location, "bob")
    assert len(bob.records.ids()) == int(outputs[1][-1]) and {r.user for r in bob.records.select()} == {"bob"}
    ada = load_store(location, "ada")  # with two writers, one writer's last save won, whole
    assert len(ada.records.ids()) == int(outputs[0][-1])
    assert {r.user for r in ada.records.select()} == {"ada"}
    texts = [r.text for r in ada.records.select(RecordFilter(kind="lm")) if r.text.startswith("r")]
    assert texts == [f"r{round}" for round in range(6) for _ in range(5)]  # one writer's rounds, none mixed


def test_knn_memory_saves_its_store_in_the_database(location, tmp_path, monkeypatch):
    from tiny import tiny_model

    import memlm
    from memlm import KnnConfig

    remote = location.startswith(("postgresql", "milvus"))
    config = KnnConfig(attention="joint", knn_lm=True, store=location if remote else None)
    writer_model = memlm.attach(tiny_model("llama"), config)
    writer_model.set_provenance(user="ada")
    writer_model.memorize(torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(0)),
                          segment_length=16, progress=False)
    writer_model.save_state(tmp_path / "state")
    assert (tmp_path / "state" / "knn" / "records.sqlite").exists() != remote
    reader = memlm.attach(tiny_model("llama"), config)
    reader.load_state(tmp_path / "state")
    same(writer_model.memories["knn"].store, reader.memories["knn"].store)
    if remote:  # MEMLM_STORE selects the database too; without any URL the load says what to set
        monkeypatch.setenv("MEMLM_STORE", location)
        plain = KnnConfig(attention="joint", knn_lm=True)
        env_reader = memlm.attach(tiny_model("llama"), plain)
        env_reader.load_state(tmp_path / "state")
        same(writer_model.memories["knn"].store, env_reader.memories["knn"].store)
        monkeypatch.delenv("MEMLM_STORE")
        with pytest.raises(ConfigError, match="set MEMLM_STORE"):
            memlm.attach(tiny_model("llama"), plain).load_state(tmp_path / "state")
