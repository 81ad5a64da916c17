"""Regression tests for the defects the reliability campaign found (one per defect)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from memlm.chat import TRANSCRIPT_FILE, ChatSession, read_transcript


class _NoState:
    def save_state(self, directory):
        pass


def test_a_turn_appended_after_a_torn_last_line_is_kept(tmp_path):
    """Power loss mid-append leaves a torn last line. read_transcript drops it, but the next turn was
    appended right after the torn bytes: the torn line and the new message fused into one invalid
    line in the middle, and the whole transcript then failed to open (CorruptedFileError)."""
    path = tmp_path / TRANSCRIPT_FILE
    good = json.dumps({"role": "user", "content": "first"}) + "\n"
    path.write_text(good + json.dumps({"role": "assistant", "content": "torn reply"})[:17])
    assert [m["content"] for m in read_transcript(path)] == ["first"]
    session = SimpleNamespace(directory=tmp_path, model=_NoState())
    ChatSession._save_turn(session, [{"role": "user", "content": "second"}, {"role": "assistant", "content": "ok"}])
    assert [m["content"] for m in read_transcript(path)] == ["first", "second", "ok"]


def test_threads_sharing_one_store_never_get_database_is_locked(tmp_path):
    """Threads share a FactStore's one SQLite connection. A thread reading (an open SELECT holds a
    read snapshot on that connection) while another thread began a write made SQLite answer
    'database is locked' at once (a stale snapshot cannot be upgraded), whatever the busy timeout:
    the concurrency campaign saw a few per second with 4 threads + 4 processes."""
    import threading
    import time

    from campaign import hash_embed, open_facts

    store = open_facts(tmp_path / "facts.sqlite")
    other = open_facts(tmp_path / "facts.sqlite")  # a second connection writing, as another process would
    errors: list[str] = []
    deadline = time.monotonic() + 2.0

    def work(user: str, target) -> None:
        step = 0
        while time.monotonic() < deadline:
            step += 1
            try:
                text = f"{user} {step}"
                fact = target.add(user, text, hash_embed([text])[0], importance=1.0)
                target.search(user, hash_embed([text])[0], 3)
                assert fact.id in {f.id for f in target.facts(user)}
                if step % 3 == 0:
                    target.delete([fact.id], user)
            except Exception as error:  # noqa: BLE001
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(f"t{i}", store if i < 6 else other)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store.check()


# --- found by the hostile-input fuzzing (test_hostile.py) -------------------------------------------
import pytest  # noqa: E402

from memlm.errors import CorruptedFileError, MemlmError  # noqa: E402


def test_a_yaml_memory_config_that_is_not_utf8_is_a_config_error(tmp_path):
    """`load_configs` caught YAML errors only: a binary file raised UnicodeDecodeError."""
    from memlm.config import load_configs

    path = tmp_path / "memories.yaml"
    path.write_bytes(b"\x80\x81memories: []")
    with pytest.raises(MemlmError):
        load_configs(path)


def test_a_memory_config_whose_mechanism_is_not_a_name_is_a_config_error():
    """`make_config({"mechanism": [...]})` raised TypeError (unhashable list); option names that are
    not strings raised TypeError from sorting them."""
    import memlm

    with pytest.raises(MemlmError):
        memlm.make_config({"mechanism": ["recurrent"]})
    with pytest.raises(MemlmError):
        memlm.make_config({"mechanism": "recurrent", 1: 2, "decay": 0.9})


def test_a_training_file_that_is_not_utf8_is_a_config_error(tmp_path):
    """Training data files were read without handling UnicodeDecodeError."""
    from memlm.train.data import TrainingData

    path = tmp_path / "chat.jsonl"
    path.write_bytes(b'{"role": "user", "content": "\xe6"}\n')
    with pytest.raises(MemlmError):
        TrainingData._file_example_source(SimpleNamespace(tokenizer=None), path)


SHA_12345 = "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"


@pytest.mark.parametrize("manifest", [{"files": 3}, {"files": {"weights.bin": 5}}, {"files": {"weights.bin": {}}},
                                      {"files": {"../outside.bin": {"size": 5, "sha256": SHA_12345}}}])
def test_a_malformed_or_escaping_gguf_cache_manifest_is_refused(tmp_path, manifest):
    """`verify_cache` raised AttributeError/TypeError/KeyError on malformed entries, and followed
    names like `../x` out of the cache folder (hashing any file it could reach)."""
    from memlm.backbone import CACHE_MANIFEST, verify_cache

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"12345")
    (tmp_path / "outside.bin").write_bytes(b"12345")
    (folder / CACHE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptedFileError):
        verify_cache(folder)


def _damage_pages(path, start: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    for at in range(start, len(data), 97):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_fact_store_damaged_past_its_header_is_a_corrupted_file_error(tmp_path):
    """A file whose first page is intact opens; the damage surfaced later as a raw
    sqlite3.DatabaseError ('database disk image is malformed') from whatever query read it."""
    from campaign import hash_embed, open_facts

    store = open_facts(tmp_path / "facts.sqlite")
    for i in range(200):
        store.add("u", f"fact {i} " + "x" * 200, hash_embed([f"fact {i}"])[0], importance=1.0)
    store.close()
    path = tmp_path / "facts.sqlite"
    path.write_bytes(path.read_bytes().replace(b"fact 24 xxxx", b"fact 24 x\xffxx"))  # invalid UTF-8 in rows
    store = open_facts(path)  # the header and schema are intact: it opens
    with pytest.raises(CorruptedFileError, match="damaged"):
        store.facts("u")  # was: sqlite3.OperationalError "Could not decode to UTF-8 column 'text'"
    _damage_pages(path)
    with pytest.raises(CorruptedFileError):
        store = open_facts(path)
        store.facts("u")


def test_a_kv_store_with_damaged_records_is_a_corrupted_file_error(tmp_path):
    """`KeyValueStore.load` let sqlite3.DatabaseError (and TypeError from a damaged layout) escape."""
    import sqlite3

    import torch

    from memlm.store import GroupSpec, KeyValueStore, StoreLayout

    store = KeyValueStore(StoreLayout({"attention": GroupSpec(heads=1, key_dim=4, value_dim=4)}))
    store.add("attention", 0, 0, torch.randn(300, 1, 4), torch.randn(300, 1, 4), [{"text": "t" * 100}] * 300)
    store.save(tmp_path)
    store.close()
    connection = sqlite3.connect(str(tmp_path / "records.sqlite"))
    connection.execute("UPDATE meta SET value = ? WHERE key = 'layout'", (json.dumps({"specs": 7}),))
    connection.commit()
    connection.close()
    with pytest.raises(CorruptedFileError):
        KeyValueStore.load(tmp_path)
    _damage_pages(tmp_path / "records.sqlite")
    with pytest.raises(CorruptedFileError):
        KeyValueStore.load(tmp_path)


@pytest.mark.parametrize("fact_id", [2**63, -2**63 - 1, "9" * 30])
def test_a_fact_id_beyond_64_bits_is_a_config_error(tmp_path, fact_id):
    """Ids past SQLite's INTEGER raised OverflowError from the driver (found by the API fuzzing)."""
    from campaign import open_memory

    memory = open_memory(tmp_path / "facts.sqlite")
    memory.add("The user likes tea.", user_id="alice", infer=False)
    for call in (memory.get, memory.delete, memory.history):
        with pytest.raises(MemlmError):
            call(fact_id, user_id="alice")
    with pytest.raises(MemlmError):
        memory.update(fact_id, "x", user_id="alice")
    memory.close()


def test_a_crash_between_the_knn_store_and_the_state_file_keeps_the_pair_of_one_save(tmp_path, monkeypatch):
    """`save_state` of a file-backed memory is two writes: the knn store (a folder beside the state
    file), then the state file. They were not atomic together: the store was saved in place in
    `knn/`, so a kill between the two left the new store with the previous state file, a pair no
    save ever wrote (the crash campaign's `knn_state` writer: 3 in 40 kills). Fix: the store goes
    to a new versioned folder that the state file names; replacing the state file commits both."""
    import pytest
    import torch
    from campaign import _knn_model, knn_digest

    import memlm.model
    from memlm.model import STATE_FILE

    model = _knn_model()
    with torch.no_grad():
        model(input_ids=torch.randint(0, 250, (1, 8)))
    model.save_state(tmp_path)
    saved = knn_digest(model)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 250, (1, 8)))
    assert knn_digest(model) != saved

    def killed(*args, **kwargs):  # the process dies after the store is written, before the state file
        raise KeyboardInterrupt

    monkeypatch.setattr(memlm.model, "save_tensors", killed)
    with pytest.raises(KeyboardInterrupt):
        model.save_state(tmp_path)
    monkeypatch.undo()
    fresh = _knn_model()
    fresh.load_state(tmp_path)
    assert knn_digest(fresh) == saved
    fresh.memories["knn"].store.close()
    # the next save commits, points `knn` at its folder and removes the others
    model.save_state(tmp_path)
    folders = sorted(entry.name for entry in tmp_path.iterdir() if entry.name != STATE_FILE)
    assert len(folders) == 2 and (tmp_path / "knn").is_symlink(), folders
    assert (tmp_path / "knn").resolve().name == folders[1]
    again = _knn_model()
    again.load_state(tmp_path)
    assert knn_digest(again) == knn_digest(model)


def test_a_state_file_naming_a_folder_outside_its_own_is_refused(tmp_path):
    """The state file names its memories' folders; a damaged or crafted name (`../x`) must not be
    followed."""
    import pytest
    import torch
    from campaign import _knn_model

    from memlm.errors import CorruptedFileError
    from memlm.model import STATE_FILE
    from memlm.serialization import load_tensors, save_tensors

    model = _knn_model()
    with torch.no_grad():
        model(input_ids=torch.randint(0, 250, (1, 8)))
    model.save_state(tmp_path)
    tensors, metadata = load_tensors(tmp_path / STATE_FILE)
    for bad in ("../knn.000001", "knn.000001/..", "/tmp", "bank.000001", 7):
        save_tensors(tmp_path / STATE_FILE, tensors, {**metadata, "files": {"knn": bad}})
        with pytest.raises(CorruptedFileError):
            _knn_model().load_state(tmp_path)


def test_a_fact_store_whose_meta_value_is_not_json_is_a_corrupted_file_error(tmp_path):
    """Found by atheris (10,000 inputs on the fact-store file): a damaged `meta` value that is still
    valid SQLite text but not JSON (the encoder name) raised `json.JSONDecodeError` from
    `FactStore.__init__` -> `get_meta`. Fix: `get_meta` raises `CorruptedFileError`."""
    import sqlite3

    import pytest
    from campaign import hash_embed, open_facts

    from memlm.errors import CorruptedFileError

    path = tmp_path / "facts.sqlite"
    store = open_facts(path)
    store.add("ada", "a fact", hash_embed(["a fact"])[0], importance=1.0)
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = '{\"name: 1' WHERE key = 'encoder'")
    with pytest.raises(CorruptedFileError):
        open_facts(path)


def test_a_fact_id_of_non_ascii_digits_is_a_config_error(tmp_path):
    """Found by the API fuzzing at 10,000 examples: `check_id` took `str.isdigit()` as "an integer",
    but '²' is a digit to isdigit() and not to int() (raw ValueError), and '٣' is read by int() as 3
    (another fact than the text names). Fix: ASCII digits only."""
    import pytest
    from campaign import open_memory

    from memlm.errors import ConfigError

    memory = open_memory(tmp_path / "facts.sqlite")
    memory.add("a fact", user_id="ada", infer=False)
    for fact_id in ("²", "٣", "１"):
        for call in (memory.get, memory.delete, memory.history):
            with pytest.raises(ConfigError):
                call(fact_id, user_id="ada")
    memory.close()


def test_a_yaml_config_with_a_null_key_is_a_config_error(tmp_path):
    """Found by atheris (yaml target, 10,000-input campaign): a YAML mapping with a null key (`~:`)
    beside an unknown name made the unknown-name message sort None with strings: raw TypeError from
    `TrainConfig.from_yaml`. Fix: the names are sorted as text (train config sections and options,
    memory config options, LM2 settings, LoRA settings)."""
    import pytest

    from memlm.config import load_configs
    from memlm.errors import ConfigError
    from memlm.train.config import TrainConfig

    for text in ("~: 1\nx: 2\n", "model:\n  ~: 1\n  y: 2\n", "data:\n  tasks: [qa1, ~]\n"):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError):
            TrainConfig.from_yaml(path)
    path.write_text("memories:\n  - mechanism: recurrent\n    ~: 1\n    zz: 2\n")
    with pytest.raises(ConfigError):
        load_configs(path)


def test_a_fact_store_whose_integrity_check_reports_text_that_is_not_utf8_is_a_corrupted_file_error(tmp_path):
    """Found by the hypothesis fuzzing of the fact-store file at 10,000 examples: a file damaged so
    that it opens, but `PRAGMA integrity_check` (in `FactStore.check`) reports text that is not UTF-8
    (the damaged page's bytes), made the driver raise a raw `UnicodeDecodeError`. The file here is
    such a damaged store (found again by the same mutations). Fix: every statement of the store turns
    `UnicodeDecodeError` into `CorruptedFileError`."""
    import shutil
    from pathlib import Path

    import pytest
    from campaign import open_facts

    from memlm.errors import CorruptedFileError

    path = tmp_path / "facts.sqlite"
    shutil.copy(Path(__file__).parent / "data" / "integrity-check-not-utf8.sqlite", path)
    store = open_facts(path)  # it opens: the damage is in a page only the full check reads
    try:
        with pytest.raises(CorruptedFileError):
            store.check()
    finally:
        store.close()


def test_a_meta_value_that_is_not_utf8_is_a_corrupted_file_error_not_a_storage_error(tmp_path):
    """Found while reproducing the one above: a `meta` value that is not UTF-8 made `connect` answer
    `StorageError` ("the file system refused the operation"), a wrong diagnosis: SQLite's
    "Could not decode to UTF-8" is an OperationalError, which `connect` took for a lock or disk
    problem. Fix: `CorruptedFileError`."""
    import sqlite3

    import pytest
    from campaign import hash_embed, open_facts

    from memlm.errors import CorruptedFileError

    path = tmp_path / "facts.sqlite"
    store = open_facts(path)
    store.add("ada", "a fact", hash_embed(["a fact"])[0], importance=1.0)
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = CAST(X'41A0FF42' AS TEXT)")
    with pytest.raises(CorruptedFileError):
        open_facts(path)


def test_a_training_config_with_a_value_of_the_wrong_type_is_a_config_error(tmp_path):
    """Found by atheris (yaml target) in the second 10,000-input run: `data: {curriculum: ~}` (and other
    values of the wrong kind: a number where a list is expected, a list of numbers where mappings are)
    raised a raw TypeError from `TrainConfig.validate`. Fix: any such error while validating is a
    `ConfigError`."""
    import pytest

    from memlm.errors import ConfigError
    from memlm.train.config import TrainConfig

    for text in ("data:\n  curriculum: ~\n", "data:\n  curriculum: 5\n",
                 "data:\n  curriculum: [{step: 0, lengths: 7}]\n", "data:\n  tasks: 3\n",
                 "data:\n  haystack: 3\n", "data:\n  files: 4\n"):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError):
            TrainConfig.from_yaml(path)
