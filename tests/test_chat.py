"""Chat sessions: memory and transcript persist per named session; bad input is refused."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import memlm
from memlm.chat import TRANSCRIPT_FILE, ChatSession, read_transcript

GREEDY = {"max_new_tokens": 4, "do_sample": False}


def new_chat(tokenizer, session="alice-1", **config):
    memory_model = memlm.attach(tiny_model("llama"), memlm.RecurrentConfig(**config), tokenizer=tokenizer)
    return ChatSession(memory_model, tokenizer, session=session, generation=GREEDY)


def test_session_survives_a_restart(tokenizer):
    chat = new_chat(tokenizer)
    chat.ask("My name is Ada.")
    chat.ask("I like tea.")
    state = chat.model.memories["recurrent"].state.clone()
    assert chat.model.memories["recurrent"].updates == 2

    resumed = new_chat(tokenizer)  # a fresh process would do exactly this
    assert resumed.resumed and resumed.turns == 2
    assert torch.equal(resumed.model.memories["recurrent"].state, state)
    assert [m["content"] for m in resumed.messages if m["role"] == "user"] == ["My name is Ada.", "I like tea."]
    resumed.ask("What do I like?")
    assert resumed.model.memories["recurrent"].updates == 3


def test_each_turn_is_written_once(tokenizer):
    chat = new_chat(tokenizer, session=None)
    assert chat.directory is None
    for number in range(1, 4):
        chat.ask(f"message {number}")
        assert chat.model.memories["recurrent"].updates == number


def test_context_keeps_only_recent_turns(tokenizer):
    chat = new_chat(tokenizer, session=None)
    chat.context_turns = 1
    chat.ask("first")
    chat.ask("second")
    prompt = chat._prompt_messages("third")
    assert [m["content"] for m in prompt if m["role"] == "user"] == ["second", "third"]


def test_bad_messages_are_refused(tokenizer):
    chat = new_chat(tokenizer, session=None)
    with pytest.raises(memlm.ConfigError, match="empty"):
        chat.ask("   ")
    with pytest.raises(memlm.ConfigError, match="too long"):
        chat.ask("x" * 200_000)
    assert chat.turns == 0


def test_reset_forgets_state_and_transcript(tokenizer):
    chat = new_chat(tokenizer)
    chat.ask("hello")
    chat.reset()
    resumed = new_chat(tokenizer)
    assert resumed.turns == 0 and resumed.model.memories["recurrent"].updates == 0


def test_torn_last_line_is_dropped_but_damage_elsewhere_is_an_error(tokenizer, tmp_path):
    chat = new_chat(tokenizer)
    chat.ask("hello")
    transcript = chat.directory / TRANSCRIPT_FILE
    with transcript.open("a") as handle:
        handle.write('{"role": "user", "cont')  # a crash while appending
    assert len(read_transcript(transcript)) == 2
    transcript.write_text('{"role": "user"\n' + transcript.read_text())
    with pytest.raises(memlm.CorruptedFileError, match="line 1"):
        read_transcript(transcript)
    transcript.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(memlm.CorruptedFileError, match="UTF-8"):
        read_transcript(transcript)


def test_resuming_with_an_incompatible_memory_is_refused_and_loses_nothing(tokenizer):
    chat = new_chat(tokenizer, memory_size=8)
    chat.ask("hello")
    files = {p.name: p.read_bytes() for p in chat.directory.iterdir()}
    with pytest.raises(memlm.IncompatibleMemoryError):
        new_chat(tokenizer, memory_size=16)
    assert {p.name: p.read_bytes() for p in chat.directory.iterdir()} == files


def test_unsafe_session_names_are_refused(tokenizer):
    for name in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(memlm.ConfigError, match="session name"):
            new_chat(tokenizer, session=name)
