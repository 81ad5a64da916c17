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
