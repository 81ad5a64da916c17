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
