"""Vector indexes, SQLite records and the KeyValueStore: agreement, eviction, deletion, persistence."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import memlm
from memlm.store import GroupSpec, KeyValueStore, RecordFilter, StoreLayout, make_index
from memlm.store.index import TOPK_CHUNK, exact_topk, index_from_arrays
from memlm.store.kv_store import RECORDS_FILE

# Random vectors have no cluster structure, the hardest case for ANN: IVF has to probe 3/4 of its lists.
APPROXIMATE = {"faiss-ivf": {"nlist": 32, "nprobe": 24}, "faiss-hnsw": {"m": 32, "ef_search": 128}}


def random_vectors(count: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True))
    return hits / exact.numel()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_backends_agree_with_exact_search(metric):
    vectors, queries = random_vectors(4000), random_vectors(64, seed=1)
    ids = torch.arange(1000, 5000)
    exact = make_index("torch", 32, metric)
    exact.add(vectors, ids)
    exact_scores, exact_ids = exact.search(queries, 8)
    # The reference itself is right: compare with a brute-force computation.
    brute = queries @ vectors.T if metric == "ip" else -torch.cdist(queries, vectors) ** 2
    assert torch.equal(exact_ids, ids[brute.topk(8).indices])
    flat = make_index("faiss-flat", 32, metric)
    flat.add(vectors, ids)
    flat_scores, flat_ids = flat.search(queries, 8)
    assert recall(flat_ids, exact_ids) == 1.0
    torch.testing.assert_close(flat_scores, exact_scores, atol=1e-3, rtol=1e-4)
    for backend, options in APPROXIMATE.items():
        index = make_index(backend, 32, metric, **options)
        index.add(vectors, ids)
        assert recall(index.search(queries, 8)[1], exact_ids) >= 0.95, backend


@pytest.mark.parametrize("backend", ["torch", "faiss-flat", "faiss-ivf", "faiss-hnsw"])
def test_remove_save_and_load(backend):
    vectors = random_vectors(3000)
    index = make_index(backend, 32, "ip", **APPROXIMATE.get(backend, {}))
    index.add(vectors, torch.arange(3000))
    removed = torch.arange(0, 3000, 2)  # half of them: HNSW rebuilds its graph past 25% tombstones
    assert index.remove(removed) == 1500 and len(index) == 1500
    assert index.remove(removed) == 0  # already gone
    _, found = index.search(vectors[:20], 10)
    assert not torch.isin(found, removed).any()
    restored = index_from_arrays(backend, 32, "ip", index.options(), index.to_arrays())
    assert len(restored) == 1500
    assert torch.equal(restored.search(vectors[:20], 10)[1], found)


def test_ivf_searches_exactly_until_it_has_trained():
    # nprobe=1 of 8 lists: once trained, search is approximate; before, it must be exact.
    index = make_index("faiss-ivf", 32, "ip", nlist=8, nprobe=1, train_size=500)
    exact = make_index("torch", 32, "ip")
    vectors, queries = random_vectors(300), random_vectors(16, seed=3)
    index.add(vectors, torch.arange(300))
    exact.add(vectors, torch.arange(300))
    assert not index.is_trained
    scores, found = index.search(queries, 5)
    exact_scores, exact_found = exact.search(queries, 5)
    assert torch.equal(found, exact_found)
    torch.testing.assert_close(scores, exact_scores, atol=1e-4, rtol=1e-4)
    index.add(random_vectors(300, seed=2), torch.arange(300, 600))
    assert index.is_trained and len(index) == 600


def test_fewer_vectors_than_k_pad_with_minus_one():
    for backend in ("torch", "faiss-flat"):
        index = make_index(backend, 8, "ip")
        index.add(random_vectors(3, 8), torch.tensor([7, 8, 9]))
        scores, found = index.search(random_vectors(2, 8, seed=1), 5)
        assert (found[:, 3:] == -1).all() and torch.isinf(scores[:, 3:]).all()


def test_dimension_mismatch_is_refused():
    index = make_index("torch", 32)
    with pytest.raises(memlm.IncompatibleMemoryError, match="width 32"):
        index.add(random_vectors(4, 16), torch.arange(4))
    with pytest.raises(memlm.IncompatibleMemoryError):
        index.search(random_vectors(1, 64), 1)
    with pytest.raises(memlm.ConfigError, match="backend"):
        make_index("annoy", 32)


# --- KeyValueStore ------------------------------------------------------------------------------

def layout(**kwargs) -> StoreLayout:
    return StoreLayout({"attention": GroupSpec(heads=2, key_dim=8, value_dim=8)}, **kwargs)


def add_items(store: KeyValueStore, count: int, session: str = "s", seed: int = 0, layer: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(count, 2, 8, generator=generator), torch.randn(count, 2, 8, generator=generator)
    records = [{"session": session, "sequence": seed, "position": i, "token": i, "text": f"{session} item {i}"}
               for i in range(count)]
    return store.add("attention", 0, layer, keys, values, records)


def test_eviction_keeps_capacity_oldest_first():
    store = KeyValueStore(layout(capacity=50))
    first = add_items(store, 40)
    second = add_items(store, 30, seed=1)
    assert len(store) == 50 and store.records.count() == 50
    kept = set(store.records.ids())
    assert kept == set(first[20:].tolist()) | set(second.tolist())


def test_eviction_of_least_used_items():
    store = KeyValueStore(layout(capacity=30, eviction="least_used"))
    ids = add_items(store, 30)
    group = store.group("attention", 0, 0)
    keys = group.keys[:, 5]  # item 5's keys, per head
    for _ in range(3):
        store.search("attention", 0, 0, keys.unsqueeze(1), 1)  # item 5 is retrieved, others not
    add_items(store, 10, seed=1)
    assert int(ids[5]) in store.records.ids()  # the used item survived
    assert len(store) == 30


def test_delete_session_removes_its_vectors_and_rows_only():
    store = KeyValueStore(layout())
    alice = add_items(store, 20, session="alice")
    bob = add_items(store, 15, session="bob", seed=1)
    assert store.delete(RecordFilter(session="alice")) == 20
    assert set(store.records.ids()) == set(bob.tolist())
    group = store.group("attention", 0, 0)
    assert set(group.ids.tolist()) == set(bob.tolist())
    assert not torch.isin(group.ids, alice).any()
    assert store.delete(RecordFilter(text="item 3")) == 1  # by text match
    assert store.delete(RecordFilter(ids=[int(bob[0])])) == 1  # by id
    assert store.delete(RecordFilter(sequence=1)) == 13  # by sequence
    assert len(store) == 0


def test_save_load_round_trip_and_items_in_several_layers(tmp_path):
    store = KeyValueStore(layout(capacity=100))
    add_items(store, 30)
    keys = [torch.randn(5, 2, 8), torch.randn(5, 2, 8)]
    shared = store.add("attention", 1, [3, 4], keys, [torch.randn(5, 2, 8)] * 2,
                       [{"text": f"shared {i}"} for i in range(5)])
    store.save(tmp_path)
    loaded = KeyValueStore.load(tmp_path)
    assert loaded.records.count() == 35 and loaded.layout == store.layout
    queries = torch.randn(2, 4, 8)
    for key in store.groups:
        expected, got = store.search(*key, queries, 4), loaded.search(*key, queries, 4)
        assert torch.equal(expected.values, got.values) and torch.equal(expected.scores, got.scores)
    assert [r.layer for r in loaded.records.select(RecordFilter(ids=shared.tolist()))] == [-1] * 5
    assert loaded.delete(RecordFilter(ids=[int(shared[0])])) == 1  # gone from both layers at once
    assert len(loaded.group("attention", 1, 3)) == len(loaded.group("attention", 1, 4)) == 4


def test_writes_after_the_last_save_are_rolled_back(tmp_path):
    store = KeyValueStore(layout())
    add_items(store, 10)
    store.save(tmp_path)
    add_items(store, 5, seed=1)  # written to the database, never saved
    store.delete(RecordFilter(ids=[1, 2]))  # deleted, never saved
    reopened = KeyValueStore.load(tmp_path)
    assert reopened.records.count() == 10 and len(reopened) == 10


def test_damaged_stores_are_refused(tmp_path):
    store = KeyValueStore(layout())
    add_items(store, 10)
    store.save(tmp_path)
    vectors = next(tmp_path.glob("vectors-*.safetensors"))
    good = vectors.read_bytes()

    vectors.write_bytes(good[:-20])
    with pytest.raises(memlm.CorruptedFileError):
        KeyValueStore.load(tmp_path)
    vectors.unlink()
    with pytest.raises(memlm.CorruptedFileError, match="missing"):
        KeyValueStore.load(tmp_path)
    vectors.write_bytes(good)

    intact = tmp_path.parent / "intact"
    shutil.copytree(tmp_path, intact)

    def restore():
        shutil.rmtree(tmp_path)
        shutil.copytree(intact, tmp_path)

    with sqlite3.connect(tmp_path / RECORDS_FILE) as connection:  # rows lost behind the store's back
        connection.execute("DELETE FROM records WHERE id <= 2")
    with pytest.raises(memlm.CorruptedFileError, match="2 vector\\(s\\) without a record row"):
        KeyValueStore.load(tmp_path)
    restore()
    with sqlite3.connect(tmp_path / RECORDS_FILE) as connection:  # a row whose vector never was saved
        columns = [row[1] for row in connection.execute("PRAGMA table_info(records)") if row[1] != "id"]
        connection.execute(f"INSERT INTO records ({', '.join(columns)}) SELECT {', '.join(columns)} "
                           f"FROM records WHERE id = 1")
    with pytest.raises(memlm.CorruptedFileError, match="1 row\\(s\\) without a vector"):
        KeyValueStore.load(tmp_path)
    restore()
    assert KeyValueStore.load(tmp_path).records.count() == 10  # the intact files still load

    other = StoreLayout({"attention": GroupSpec(heads=2, key_dim=16, value_dim=16)})
    with pytest.raises(memlm.IncompatibleMemoryError, match="another model"):
        KeyValueStore.load(tmp_path, expected_layout=other)

    (tmp_path / RECORDS_FILE).write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{RECORDS_FILE}{suffix}").unlink(missing_ok=True)
    with pytest.raises(memlm.CorruptedFileError):
        KeyValueStore.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        KeyValueStore.load(tmp_path / "nowhere")


SAVER = textwrap.dedent("""
    import sys, time, torch
    from memlm.store import GroupSpec, KeyValueStore, StoreLayout
    directory = sys.argv[1]
    store = KeyValueStore(StoreLayout({"attention": GroupSpec(heads=2, key_dim=64, value_dim=64)}, capacity=6000))
    step = 0
    while True:
        keys, values = torch.randn(800, 2, 64), torch.randn(800, 2, 64)
        store.add("attention", 0, 0, keys, values, [{"text": f"{step}-{i}", "sequence": step} for i in range(800)])
        print("begin", step, flush=True)
        started = time.perf_counter()
        store.save(directory)
        print("end", step, time.perf_counter() - started, flush=True)
        step += 1
""")


def test_kill_during_save_leaves_the_last_completed_save(tmp_path):
    """Kill a saving process at random moments inside `save()`; the store must load as exactly the
    last save that completed (every item of it, nothing of the interrupted one)."""
    import random

    rng, inside = random.Random(0), 0
    for _ in range(30):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        lines = [process.stdout.readline().split() for _ in range(3)]  # begin 0, end 0, begin 1: in save 1
        assert [line[:2] for line in lines] == [["begin", "0"], ["end", "0"], ["begin", "1"]]
        time.sleep(rng.uniform(0.0, 0.8 * float(lines[1][2])))  # somewhere inside save 1, judging by save 0
        process.kill()
        process.wait()
        landed_inside = "end" not in process.stdout.read()  # save 1 had not reported completion
        inside += landed_inside
        store = KeyValueStore.load(tmp_path)  # consistency of rows and vectors is checked on load
        sequences = sorted({r.sequence for r in store.records.select()})
        if landed_inside:  # the interrupted save 1 either committed entirely or not at all
            assert sequences in ([0], [0, 1])
        assert store.records.count() == 800 * len(sequences) == len(store)
        store.close()
        for path in tmp_path.iterdir():
            path.unlink()
        if inside >= 4:
            break
    assert inside >= 4, "no kill landed inside a save: make the saves slower"


@pytest.mark.parametrize("length", [100, 4 * TOPK_CHUNK + 1, 9 * TOPK_CHUNK + 123])
def test_two_stage_topk_finds_what_topk_finds(length):
    scores = torch.randn(2, 3, length, generator=torch.Generator().manual_seed(length))
    values, positions = exact_topk(scores, 32)
    expected_values, expected_positions = scores.topk(32, dim=-1)
    assert torch.equal(values, expected_values) and torch.equal(positions, expected_positions)


def test_batched_search_skips_the_newest_items_and_counts_sequences_on_the_host():
    store = KeyValueStore(layout())
    add_items(store, 30, seed=0)
    add_items(store, 10, seed=1)
    group = store.group("attention", 0, 0)
    assert group.latest_count(1, 100) == 10 and group.latest_count(1, 4) == 4 and group.latest_count(0, 100) == 0
    queries = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    similarity = queries @ group.keys.transpose(1, 2)  # (heads, 5, 40)
    assert torch.equal(group.search_positions(queries, 3).positions, similarity.topk(3).indices)
    assert torch.equal(group.search_positions(queries, 3, limit=30).positions, similarity[..., :30].topk(3).indices)
    found = group.search_positions(queries, 50, limit=30)  # more than there are: padded, -inf
    assert torch.isinf(found.scores[..., 30:]).all() and torch.isfinite(found.scores[..., :30]).all()
    store.delete(RecordFilter(sequence=1, ids=[int(group.ids[39])]))
    assert group.latest_count(1, 100) == 9 and len(group) == 39
