"""`FactMemory` (also `memlm.Memory`): a mem0-style memory of facts per user, with no language model in the loop.

Writes take milliseconds (rules extract facts from messages; MiniLM embeds them; SQLite stores them)
and every call is scoped to one user: a user never sees another user's memories, because the store
filters every query on the user (see `memlm.facts.store`). The same store file can back a chat
(`memlm chat --user alice`) and several processes at once.

Example:
    >>> memory = memlm.FactMemory("facts.sqlite")
    >>> memory.add("Hi, I'm Ada and I live in Lisbon.", user="ada")
    >>> memory.search("Where does she live?", user="ada")[0]["memory"]
    'The user lives in Lisbon.'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from memlm.errors import ConfigError
from memlm.facts.bank import FactBank, FactBankConfig, LearnResult
from memlm.facts.store import MAX_SOURCE_CHARS, FactStore, check_text

Messages = str | dict[str, str] | list[dict[str, str]]


class FactMemory:
    """Facts per user: add, search, get_all, get, update, delete, delete_all, history.

    Args:
        path: SQLite file (created if missing; `None`: in memory).
        config: bank settings (ranking blend, duplicates, capacity, decay); `importance` is always
            "constant" here since no model is loaded.
        embed: texts -> unit vectors (default: the offline MiniLM); `encoder` names it in the store.
    """

    def __init__(self, path: str | os.PathLike | None = None, config: FactBankConfig | None = None,
                 embed: Callable[[list[str]], Any] | None = None, encoder: str = "minilm:all-MiniLM-L6-v2",
                 dimension: int | None = None):
        if embed is None:
            from memlm.embeddings import MINILM_DIMENSION, sentence_encoder

            embed, dimension = sentence_encoder().encode, MINILM_DIMENSION
        elif dimension is None:
            raise ConfigError("Memory(embed=...) also needs dimension=")
        config = dataclasses.replace(config or FactBankConfig(), importance="constant")
        self.store = FactStore(path, dimension, encoder)
        self.bank = FactBank(config, self.store, embed)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> FactMemory:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def add(self, messages: Messages, user: str, *, category: str | None = None, infer: bool = True
            ) -> list[dict[str, Any]]:
        """Remember what `messages` say about the user.

        `messages` is a string, a message dict or a list of them (`{"role", "content"}`). With
        `infer=True` facts are extracted from user messages (rules; the raw turn is kept as each
        fact's source); with `infer=False` each text is stored as it is. Returns one result per
        candidate fact: {"id", "memory", "event": "ADD" | "NONE", "reason"}.
        """
        results: list[LearnResult] = []
        for role, text in _as_messages(messages):
            if not infer:
                results.append(self.bank.learn(text, category, user, source=text, importance=1.0, actor="api"))
            elif role == "user":
                results.extend(self.bank.remember_turn(text, user=user))
        return [{"id": r.fact.id if r.fact else None, "memory": r.fact.text if r.fact else None,
                 "event": "ADD" if r.stored else "NONE", "reason": r.reason} for r in results]

    def search(self, query: str, user: str, limit: int = 5, min_similarity: float | None = None
               ) -> list[dict[str, Any]]:
        """The user's facts ranked for `query`: [{"id", "memory", "score", "similarity", ...}]."""
        hits = self.bank.retrieve(query, limit, user, min_similarity=min_similarity)
        return [{**_fact_dict(hit.fact), "score": hit.score, "similarity": hit.similarity} for hit in hits]

    def get_all(self, user: str, category: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        self.store.require_user(user)
        return [_fact_dict(fact) for fact in self.store.facts(user, category=category, limit=limit)]

    def get(self, memory_id: int, user: str) -> dict[str, Any]:
        return _fact_dict(self.store.get(memory_id, user=user))

    def update(self, memory_id: int, text: str, user: str) -> dict[str, Any]:
        text = check_text(text)
        fact = self.store.update(memory_id, user, text, self.bank.embed([text])[0], actor="api")
        return _fact_dict(fact)

    def delete(self, memory_id: int, user: str) -> bool:
        return self.store.delete([memory_id], user, actor="api") == 1

    def delete_all(self, user: str) -> int:
        return self.store.delete_all(user, actor="api")

    def history(self, memory_id: int, user: str) -> list[dict[str, Any]]:
        return [change.to_dict() for change in self.store.history(memory_id, user=user)]

    def users(self) -> list[str]:
        return self.store.users()


def _as_messages(messages: Messages) -> list[tuple[str, str]]:
    if isinstance(messages, (str, bytes, bytearray)):
        return [("user", check_text(messages, "message", MAX_SOURCE_CHARS))]
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        raise ConfigError(f"messages must be text (str), a message dict or a list of them, "
                          f"got {type(messages).__name__}")
    pairs = []
    for message in messages:
        if not isinstance(message, dict) or "content" not in message:
            raise ConfigError(f"each message must be a dict with 'role' and 'content', got {message!r:.80}")
        pairs.append((message.get("role", "user"), check_text(message["content"], "message", MAX_SOURCE_CHARS)))
    return pairs


def _fact_dict(fact: Any) -> dict[str, Any]:
    values = fact.to_dict()
    values["memory"] = values.pop("text")
    return values
