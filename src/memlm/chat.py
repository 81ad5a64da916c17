"""A chat session whose memory persists across turns and, when named, across restarts.

Each turn: the recent turns (`context_turns`) and the new user message go through the tokenizer's
chat template; the model answers while reading its memories; then the turn (user message + reply)
is written to memory once. A named session lives in `<home>/sessions/<name>/`:

* `memory_state.safetensors` — what the memories remember (`MemoryModel.save_state`);
* `transcript.jsonl` — every message with a timestamp (one JSON object per line, appended).

With a `user`, sessions live under `<home>/users/<user>/sessions/<name>` (default name "default"), and
a `bank` memory, if attached, reads and writes that user's facts: before each answer the facts
retrieved for the message are put into the system prompt (`last_memories` says which); after it,
facts stated in the message are extracted and learned (the raw turn is their source).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memlm.errors import ConfigError, CorruptedFileError
from memlm.model import STATE_FILE, MemoryModel
from memlm.paths import check_name, session_dir, user_dir

logger = logging.getLogger(__name__)

TRANSCRIPT_FILE = "transcript.jsonl"
MAX_MESSAGE_CHARS = 100_000


@dataclass
class ChatSession:
    """Chat with a `MemoryModel`; `session=None` keeps everything in this process only.

    Example:
        >>> chat = ChatSession(mm, tokenizer, session="demo")
        >>> chat.ask("Hi, I'm Ada.")
    """

    model: MemoryModel
    tokenizer: Any
    session: str | None = None
    home: str | os.PathLike | None = None
    user: str | None = None
    context_turns: int = 4
    system_prompt: str | None = None
    generation: dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 128, "do_sample": False})
    messages: list[dict[str, str]] = field(default_factory=list)
    judge: Callable[[str], bool] | None = None  # extra fact extraction, e.g. memlm.facts.extraction.model_judge

    def __post_init__(self) -> None:
        if self.context_turns < 0:
            raise ConfigError(f"context_turns must be >= 0, got {self.context_turns}")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("the tokenizer has no chat template; use `memlm generate` for raw text")
        if self.user is not None:
            self.session = self.session or "default"
            self.directory: Path | None = user_dir(self.user, self.home) / "sessions" / check_name(self.session)
        else:
            self.directory = session_dir(self.session, self.home) if self.session is not None else None
        self.resumed = False
        self.bank = self.model.memories["bank"] if "bank" in self.model.memories else None  # noqa: SIM401
        self.last_memories: list[Any] = []  # what the bank retrieved for the latest answer
        self.last_learned: list[Any] = []  # what it learned from the latest turn
        self.model.set_provenance(user=self.user, session=self.session)
        if self.directory is not None and self.directory.exists():
            self._load()

    # --- persistence -------------------------------------------------------------------------
    def _load(self) -> None:
        assert self.directory is not None
        if (self.directory / STATE_FILE).exists():
            self.model.load_state(self.directory)
        self.messages = read_transcript(self.directory / TRANSCRIPT_FILE)
        self.resumed = bool(self.messages) or (self.directory / STATE_FILE).exists()

    def _save_turn(self, new_messages: list[dict[str, str]]) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.directory / TRANSCRIPT_FILE)
        with (self.directory / TRANSCRIPT_FILE).open("a", encoding="utf-8") as handle:
            for message in new_messages:
                handle.write(json.dumps(message, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.model.save_state(self.directory)

    # --- chatting ----------------------------------------------------------------------------
    @property
    def turns(self) -> int:
        return sum(1 for message in self.messages if message["role"] == "user")

    def _prompt_messages(self, user_text: str) -> list[dict[str, str]]:
        history = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        recent = history[len(history) - 2 * self.context_turns:] if self.context_turns else []
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, *recent, {"role": "user", "content": user_text}]

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> torch.Tensor:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, return_tensors="pt", return_dict=True
        )["input_ids"]
        return ids.to(self.model.layout.device)

    @torch.no_grad()
    def ask(self, user_text: str, streamer: Any = None, on_reply: Callable[[str], None] | None = None) -> str:
        """Answer one user message, write the turn to memory, and persist the session."""
        user_text = user_text.strip()
        if not user_text:
            raise ConfigError("empty message")
        if len(user_text) > MAX_MESSAGE_CHARS:
            raise ConfigError(f"message too long ({len(user_text)} characters; limit {MAX_MESSAGE_CHARS})")
        messages = self._prompt_messages(user_text)
        self.last_memories = []
        messages, self.last_memories = self.model.augment_messages(messages, query=user_text)
        prompt_ids = self._template(messages, add_generation_prompt=True)
        output = self.model.generate(
            input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), write_memory=False,
            streamer=streamer, pad_token_id=self.tokenizer.pad_token_id, **self.generation,
        )
        reply = self.tokenizer.decode(output[0, prompt_ids.shape[1]:], skip_special_tokens=True).strip()
        # Memory gets this turn only; the earlier turns were written when they happened. Memories
        # that learn from text (the bank) get the text; the others the templated turn.
        turn = [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]
        self.last_learned = self.model.observe_turn(user_text, reply, self._template(turn, add_generation_prompt=False),
                                                    judge=self.judge)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        new_messages = [{**message, "time": now} for message in turn]
        self.messages.extend(new_messages)
        self._save_turn(new_messages)
        if on_reply is not None:
            on_reply(reply)
        return reply

    def reset(self) -> None:
        """Forget the memory state and the transcript of this session."""
        self.model.reset()
        self.messages.clear()
        if self.directory is not None:
            (self.directory / TRANSCRIPT_FILE).unlink(missing_ok=True)
            self.model.save_state(self.directory)


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (a crash while appending; `read_transcript` skips it) before appending,
    so the next message starts a line of its own instead of fusing with the torn bytes into a
    damaged line in the middle of the file."""
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        return
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        block, end = 1 << 16, size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        logger.warning("dropping a torn last line of %s before appending", path)
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


def read_transcript(path: Path) -> list[dict[str, str]]:
    """Read a transcript; a torn last line (crash while appending) is dropped with a warning,
    damage anywhere else raises `CorruptedFileError`."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CorruptedFileError(f"{path} is not UTF-8 text ({error})") from error
    messages = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            if not isinstance(message, dict) or {"role", "content"} - set(message):
                raise ValueError("not a message object")
        except ValueError as error:
            if number == len(lines):
                logger.warning("dropping a torn last line of %s (%s)", path, error)
                break
            raise CorruptedFileError(f"{path} line {number} is not a valid message ({error})") from error
        messages.append(message)
    return messages
