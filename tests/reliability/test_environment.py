"""The environment failing: disk full (RLIMIT_FSIZE in a child), a read-only home (a child that
drops root), another process holding the lock. Each must end in a typed `MemlmError`
(`StorageError`) whose message says what to do, with the last good state intact."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from campaign import hash_embed, open_facts

from memlm.errors import MemlmError, StorageError
from memlm.store import GroupSpec, KeyValueStore, StoreLayout

SRC = Path(__file__).resolve().parents[2] / "src"
HERE = Path(__file__).resolve().parent


def run_child(code: str, *args: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


DISK_FULL = """
    import resource, signal, sys
    from pathlib import Path
    import torch
    from campaign import hash_embed, open_facts
    from memlm.errors import MemlmError
    from memlm.serialization import save_tensors
    from memlm.store import GroupSpec, KeyValueStore, StoreLayout
    directory = Path(sys.argv[1])
    store = open_facts(directory / "facts.sqlite")
    kv = KeyValueStore.load(directory / "kv")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
    def attempt(name, call):
        try:
            call()
            print(name, "no-error")
        except MemlmError as error:
            print(name, type(error).__name__, str(error).replace("\\n", " "))
    def many():
        for i in range(1000):
            store.add("u", f"big {i} " + "y" * 5000, hash_embed([f"big {i}"])[0], importance=1.0)
    attempt("facts", many)
    attempt("tensors", lambda: save_tensors(directory / "state.safetensors", {"x": torch.zeros(200_000)}))
    def grow():
        kv.add("attention", 0, 0, torch.randn(3000, 2, 16), torch.randn(3000, 2, 16), [{"text": "new"}] * 3000)
        kv.save(directory / "kv")
    attempt("kv", grow)
"""


def kv_store(directory: Path, count: int = 10) -> KeyValueStore:
    store = KeyValueStore(StoreLayout({"attention": GroupSpec(heads=2, key_dim=16, value_dim=16)}))
    store.add("attention", 0, 0, torch.randn(count, 2, 16), torch.randn(count, 2, 16),
              [{"text": f"old {i}"} for i in range(count)])
    store.save(directory)
    return store


def test_disk_full_is_a_typed_error_and_keeps_the_last_good_state(tmp_path):
    from memlm.serialization import load_tensors, save_tensors

    store = open_facts(tmp_path / "facts.sqlite")
    for i in range(20):
        store.add("u", f"good {i}", hash_embed([f"good {i}"])[0], importance=1.0)
    store.close()
    save_tensors(tmp_path / "state.safetensors", {"x": torch.ones(3)})
    kv_store(tmp_path / "kv").close()
    lines = run_child(DISK_FULL, str(tmp_path))
    outcome = {line.split()[0]: line for line in lines}
    for name in ("facts", "tensors", "kv"):
        assert "StorageError" in outcome[name] and "ulimit" in outcome[name], outcome[name]
    store = open_facts(tmp_path / "facts.sqlite")
    store.check()
    assert {f"good {i}" for i in range(20)} <= {fact.text for fact in store.facts("u")}
    store.close()
    assert torch.equal(load_tensors(tmp_path / "state.safetensors")[0]["x"], torch.ones(3))
    kv = KeyValueStore.load(tmp_path / "kv")
    assert len(kv) == 10 and {r.text for r in kv.records.select()} == {f"old {i}" for i in range(10)}
    kv.close()


READ_ONLY = """
    import os, sys
    from pathlib import Path
    import torch
    from campaign import hash_embed, open_facts
    from memlm.errors import MemlmError
    from memlm.serialization import save_tensors
    import memlm.facts.store, sqlite3, tempfile, json, errno, platformdirs
    directory = Path(sys.argv[1])
    os.setgid(65534)
    os.setuid(65534)  # nobody: the directory (mode 0555, owned by root) is read-only for us
    def attempt(name, call):
        try:
            call()
            print(name, "no-error")
        except MemlmError as error:
            print(name, type(error).__name__, str(error).replace("\\n", " "))
    attempt("new-store", lambda: open_facts(directory / "sub" / "facts.sqlite"))
    attempt("new-file", lambda: open_facts(directory / "facts2.sqlite"))
    attempt("tensors", lambda: save_tensors(directory / "state.safetensors", {"x": torch.zeros(4)}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_read_only_home_is_a_typed_error_that_says_so():
    import shutil
    import tempfile

    # not under pytest's tmp_path: its parents are 0700, so `nobody` could not even reach the folder
    outer = Path(tempfile.mkdtemp(prefix="memlm-read-only-", dir="/tmp"))
    home = outer / "home"
    home.mkdir()
    os.chmod(outer, 0o755)
    os.chmod(home, 0o555)
    try:
        lines = run_child(READ_ONLY, str(home))
    finally:
        os.chmod(home, 0o755)
        shutil.rmtree(outer)
    outcome = {line.split()[0]: line for line in lines}
    for name in ("new-store", "new-file", "tensors"):
        assert "StorageError" in outcome[name], outcome[name]
        assert "permission" in outcome[name].lower() or "writable" in outcome[name], outcome[name]
        assert "corrupt" not in outcome[name].lower(), outcome[name]


def test_a_second_process_holding_the_fact_store_lock_gives_a_typed_error(tmp_path, monkeypatch):
    import memlm.store.sqlite

    monkeypatch.setattr(memlm.store.sqlite, "BUSY_TIMEOUT_S", 0.3)
    store = open_facts(tmp_path / "facts.sqlite")
    store.add("u", "kept", hash_embed(["kept"])[0], importance=1.0)
    other = sqlite3.connect(str(tmp_path / "facts.sqlite"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    with pytest.raises(StorageError, match="another process holds its write lock"):
        store.add("u", "blocked", hash_embed(["blocked"])[0], importance=1.0)
    other.execute("ROLLBACK")
    other.close()
    store.add("u", "after", hash_embed(["after"])[0], importance=1.0)  # usable again once released
    store.check()
    assert [fact.text for fact in store.facts("u")] == ["kept", "after"]


def test_a_second_process_holding_the_kv_store_lock_gives_a_typed_error_not_a_hang(tmp_path, monkeypatch):
    import memlm.store.kv_store

    monkeypatch.setattr(memlm.store.kv_store, "LOCK_TIMEOUT_S", 0.3)
    store = kv_store(tmp_path)
    with (tmp_path / ".lock").open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file description: as another process would
        store.add("attention", 0, 0, torch.randn(2, 2, 16), torch.randn(2, 2, 16), [{"text": "new"}] * 2)
        with pytest.raises(StorageError, match="wait for its save to finish"):
            store.save(tmp_path)
        with pytest.raises(MemlmError):
            KeyValueStore.load(tmp_path)
    store.close()
    kv = KeyValueStore.load(tmp_path)
    assert len(kv) == 10
    kv.close()


UNREADABLE = """
    import os, sys
    from pathlib import Path
    from campaign import open_facts
    from memlm.errors import MemlmError
    from memlm.serialization import load_tensors
    from memlm.store import KeyValueStore
    directory = Path(sys.argv[1])
    os.setgid(65534)
    os.setuid(65534)  # nobody: the files (mode 0600, owned by root) are not readable for us
    def attempt(name, call):
        try:
            call()
            print(name, "no-error")
        except MemlmError as error:
            print(name, type(error).__name__, str(error).replace("\\n", " "))
    attempt("facts", lambda: open_facts(directory / "facts.sqlite"))
    attempt("tensors", lambda: load_tensors(directory / "state.safetensors"))
    attempt("kv", lambda: KeyValueStore.load(directory / "kv"))
    attempt("kv-records", lambda: KeyValueStore.load(directory / "kv2"))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_files_this_user_may_not_read_are_a_typed_error_that_says_so(tmp_path):
    """Missing permissions beyond a read-only directory: existing store files the user may not read
    (a fact store, a state file, a KV store's lock file, a KV store's records file). Before the fix a
    state file gave CorruptedFileError ("not a readable safetensors file ... No such file") and a KV
    store a raw PermissionError."""
    import shutil
    import tempfile


    tmp_path = Path(tempfile.mkdtemp(prefix="memlm-unreadable-", dir="/tmp"))  # pytest's folders are 0700
    try:
        _unreadable_files(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _unreadable_files(tmp_path: Path) -> None:
    from memlm.serialization import save_tensors

    os.chmod(tmp_path, 0o755)
    store = open_facts(tmp_path / "facts.sqlite")
    store.add("u", "a fact", hash_embed(["a fact"])[0], importance=1.0)
    store.close()
    save_tensors(tmp_path / "state.safetensors", {"x": torch.zeros(4)})
    for name in ("kv", "kv2"):
        kv = KeyValueStore(StoreLayout({"attention": GroupSpec(heads=1, key_dim=4, value_dim=4)}))
        kv.add("attention", 0, 0, torch.randn(2, 1, 4), torch.randn(2, 1, 4), [{"text": "a"}, {"text": "b"}])
        kv.save(tmp_path / name)
        kv.close()
        os.chmod(tmp_path / name, 0o755)
    closed = [tmp_path / "facts.sqlite", tmp_path / "state.safetensors", *(tmp_path / "kv").iterdir(),
              *(p for p in (tmp_path / "kv2").iterdir() if p.name != ".lock")]
    for path in closed:
        os.chmod(path, 0o600)
    os.chmod(tmp_path / "kv2" / ".lock", 0o666)
    lines = run_child(UNREADABLE, str(tmp_path))
    outcome = {line.split()[0]: line for line in lines}
    for name in ("facts", "tensors", "kv", "kv-records"):
        assert "StorageError" in outcome[name], outcome[name]
        assert "permission" in outcome[name].lower(), outcome[name]
        assert "corrupt" not in outcome[name].lower(), outcome[name]
    for name in ("facts", "tensors", "kv"):
        assert "could not read" in outcome[name], outcome[name]
