"""`FactMemory` (also `memlm.Memory`): facts per user with no language model in the loop, behind the
API mem0 users know.

Writes take milliseconds (rules extract facts from messages; MiniLM embeds them; SQLite stores them)
and every call is scoped to one owner: a user never sees another user's memories, because the store
filters every query on the owner (see `memlm.facts.store`). The same store file can back a chat
(`memlm chat --user alice`) and several processes at once.

Code written for mem0's `Memory` runs with the import changed (docs/bank.md has the mapping):

    >>> from memlm import Memory
    >>> m = Memory()
    >>> m.add([{"role": "user", "content": "Hi, I'm Ada and I live in Lisbon."}], user_id="ada",
    ...       metadata={"source": "onboarding"})
    {'results': [{'id': 1, 'memory': "The user is Ada and the user lives in Lisbon.", 'event': 'ADD', ...}]}
    >>> m.search("Where do I live?", user_id="ada", limit=3)["results"][0]["memory"]
    'The user is Ada and the user lives in Lisbon.'
    >>> m.search("Where do I live?", filters={"user_id": "ada", "source": {"in": ["onboarding"]}}, top_k=3)

memlm's own spelling (`user=`, `min_similarity=`, `category=`) keeps working.

Scoping: `user_id` (or `user`) owns a memory; `agent_id` and `run_id` are recorded with it and
filter within the owner's memories. A memory added with no user belongs to its agent
(`"agent.<agent_id>"`) or, failing that, its run (`"run.<run_id>"`); mem0 would let a search by
`agent_id` alone reach every user's memories with that agent, memlm does not (isolation first), and
says so (`ConfigError`) when that is what such a search would have needed.

Defaults follow mem0's: `Memory()` keeps `<home>/facts.sqlite`, a search returns up to 20 memories
above a relevance of 0.1, and an owner with no memories yet reads as empty. `AsyncMemory` is the
same API for asyncio; `Memory.from_config` reads mem0's config dict (`memlm.facts.mem0_config`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from typing import Any

from memlm.errors import ConfigError
from memlm.facts.backends import default_store, open_fact_store
from memlm.facts.bank import FactBank, FactBankConfig, LearnResult
from memlm.facts.filters import compile_filters, iso_time, to_unix_time
from memlm.facts.store import MAX_SOURCE_CHARS, Fact, FactChange, check_id, check_text
from memlm.paths import check_name, facts_path

Messages = str | dict[str, str] | list[dict[str, str]]
_UNSET: Any = ...
ENCODERS = {"minilm": "minilm:all-MiniLM-L6-v2", "e5": "e5:multilingual-e5-small-q4"}
# mem0's search defaults (`Memory.search(top_k=20, threshold=0.1)`): a cut any tighter drops memories
# that code written for mem0 expects to see; callers that want fewer ask for fewer.
DEFAULT_TOP_K = 20
DEFAULT_THRESHOLD = 0.1


class FactMemory:
    """Facts per user: add, search, get_all, get, update, delete, delete_all, history, reset.

    Args:
        path: where the facts live: an SQLite file (created if missing), `None` (in memory) or a store
            URL (`postgresql://...`, see `memlm.facts.backends`); left out, `MEMLM_STORE` if set,
            else `<home>/facts.sqlite` (`memlm.paths.facts_path`, the file `memlm chat` uses), so
            that `Memory()` remembers across processes as mem0's `Memory()` does. `store=` is the
            same argument by its other name.
        config: bank settings (ranking blend, hybrid retrieval, supersession, duplicates, capacity,
            decay, ttl); `importance` is always "constant" here since no model is loaded.
        embed: texts -> unit vectors (default: the offline MiniLM, or e5 with `encoder="e5"`);
            `encoder` names it in the store, `dimension` is its width.
    """

    def __init__(self, path: str | os.PathLike | None = _UNSET, config: FactBankConfig | None = None,
                 embed: Callable[[list[str]], Any] | None = None, encoder: str = ENCODERS["minilm"],
                 dimension: int | None = None, *, store: str | os.PathLike | None = _UNSET):
        if path is not _UNSET and store is not _UNSET:
            raise ConfigError("give the store once: as path or as store=")
        location = path if path is not _UNSET else store
        if location is _UNSET:
            location = default_store(facts_path())
        if embed is None:
            encoder = ENCODERS.get(encoder, encoder)
            if encoder == ENCODERS["e5"]:
                from memlm.embeddings import E5_DIMENSION, e5_encoder

                model = e5_encoder()
                embed, dimension = model.encode_queries, E5_DIMENSION  # symmetric use measured best
            elif encoder == ENCODERS["minilm"]:
                from memlm.embeddings import MINILM_DIMENSION, sentence_encoder

                embed, dimension = sentence_encoder().encode, MINILM_DIMENSION
            else:
                raise ConfigError(f"unknown encoder {encoder!r}; choose from {sorted(ENCODERS)} or pass embed=")
        elif dimension is None:
            raise ConfigError("Memory(embed=...) also needs dimension=")
        config = dataclasses.replace(config or FactBankConfig(), importance="constant")
        self.store = open_fact_store(location, dimension, encoder)
        self.bank = FactBank(config, self.store, embed)

    @classmethod
    def from_config(cls, config_dict: dict[str, Any]) -> FactMemory:
        """A memory from mem0's configuration dict: the store's path and the embedder carry over,
        LLM sections are not used (a `Mem0ConfigWarning` names them); `memlm.facts.mem0_config`
        has the mapping.

        Example:
            >>> Memory.from_config({"vector_store": {"provider": "faiss", "config": {"path": "/tmp/mem"}}})
        """
        from memlm.facts.mem0_config import memory_settings

        return cls(**memory_settings(config_dict))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> FactMemory:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------
    def add(self, messages: Messages, user_id: str | None = None, *, user: str | None = None,
            agent_id: str | None = None, run_id: str | None = None, metadata: dict[str, Any] | None = None,
            infer: bool = True, category: str | None = None, expires_at: Any = None, ttl: float | None = None,
            expiration_date: Any = None, memory_type: str | None = None, prompt: str | None = None
            ) -> dict[str, list[dict[str, Any]]]:
        """Remember what `messages` say about the user.

        `messages` is a string, a message dict or a list of them (`{"role", "content"}`, optional
        `name`). System messages are never stored. With `infer=True` facts are extracted by rules
        from the user's messages only (the raw turn is kept as each fact's source; requests and
        questions are not facts; a memory with no user also keeps statements about the world); with
        `infer=False` each message is stored as it is, as a conversation turn: its `name` and the
        message before it in its run (this call's previous message, or the run's latest memory) are
        searched with it (`context`). A fact that updates one
        already known ("I moved to Oslo" after "I live in Lisbon") supersedes it: the old one stays in
        its history, no longer retrieved. `expires_at` (a time), `ttl` (seconds from now) or mem0's
        `expiration_date` ("YYYY-MM-DD") end a fact's retrieval.

        Returns `{"results": [...]}`, one entry per candidate fact: `{"id", "memory", "event", "reason"}`
        with event "ADD" (new), "UPDATE" (new, replacing `previous_memory` / `previous_ids`) or
        "NONE" (a duplicate or not kept; `id` is the fact it duplicates, if any).
        """
        if memory_type is not None or prompt is not None:
            raise ConfigError("memory_type and prompt need an LLM extractor; memlm extracts facts by rules")
        if not isinstance(infer, bool):
            raise ConfigError(f"infer must be True or False, got {infer!r}")
        owner = self._owner(user_id, user, agent_id, run_id, None, required=True)
        for name, value in (("agent_id", agent_id), ("run_id", run_id)):
            if value is not None:
                check_name(value, name)
        deadline = self._expiry(expires_at, ttl, expiration_date)
        extra = {"metadata": metadata, "agent_id": agent_id, "run_id": run_id, "expires_at": deadline}
        # What a user says about themselves becomes their memory; a memory that belongs to an agent or
        # a run (no user) is about the world ("Ticket 42: the printer is on fire"), so its statements count.
        about_the_world = user_id is None and user is None
        results: list[tuple[LearnResult, str, str | None]] = []
        previous = self._last_message_of_run(owner, run_id) if not infer else None
        for role, text, name in _as_messages(messages):
            if role == "system":  # instructions and retrieved memories, not something anyone said
                continue
            if not infer:
                # A stored message is a turn of a conversation: who said it and what it answers are
                # searched with it (its `context`), and its vector is of "name: text".
                said = f"{name}: {text}" if name else text
                context = " ".join(part for part in (previous, f"{name}:" if name else None) if part) or None
                result = self.bank.learn(text, category, owner, source=said, importance=1.0, actor="api",
                                         embed_text=said, context=context, **extra)
                results.append((result, role, name))
                previous = said
            elif role == "user":
                learned = self.bank.remember_turn(text, user=owner, keep_statements=about_the_world, **extra)
                results.extend((result, role, name) for result in learned)
        return {"results": [_event(result, role, name) for result, role, name in results]}

    def update(self, memory_id: int | str, text: str | None = None, user_id: str | None = None, *,
               user: str | None = None, data: str | None = None, metadata: dict[str, Any] | None = None,
               expires_at: Any = _UNSET, expiration_date: Any = _UNSET) -> dict[str, Any]:
        """Change a memory's text, merge into its metadata, or set / clear (None) its expiry; the
        history keeps the old text. Returns the updated memory plus mem0's `message`."""
        text = text if text is not None else data
        fact = self._get(memory_id, user_id, user)
        if text is None and metadata is None and expires_at is _UNSET and expiration_date is _UNSET:
            raise ConfigError("update needs a new text, metadata or expires_at")
        deadline: Any = ...
        if expires_at is not _UNSET or expiration_date is not _UNSET:
            value = expires_at if expires_at is not _UNSET else expiration_date
            deadline = None if value is None else to_unix_time(value, "expires_at")
        vector = None
        if text is not None:
            text = check_text(text)
            vector = self.bank.embed([text])[0]
        updated = self.store.update(fact.id, fact.user, text, vector, actor="api", metadata=metadata,
                                    expires_at=deadline)
        return {"message": "Memory updated successfully!", **_memory(updated)}

    def delete(self, memory_id: int | str, user_id: str | None = None, *, user: str | None = None) -> dict[str, Any]:
        """Delete one memory (its history keeps it). An unknown id, or another user's, raises
        `FactNotFoundError`."""
        fact = self._get(memory_id, user_id, user)
        self.store.delete([fact.id], fact.user, actor="api")
        return {"message": "Memory deleted successfully!", "id": fact.id}

    def delete_all(self, user_id: str | None = None, *, user: str | None = None, agent_id: str | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
        """Delete every memory of the owner (only those of `agent_id` / `run_id` when given)."""
        owner = self._owner(user_id, user, agent_id, run_id, None, required=True)
        accept = compile_filters({k: v for k, v in (("agent_id", agent_id), ("run_id", run_id)) if v is not None})
        if not self.store.has_user(owner):  # nothing was ever stored for them: nothing to delete (as mem0)
            self._refuse_cross_user_scope(owner, user_id, user, None)
            return {"message": "Memories deleted successfully!", "deleted": 0}
        ids = [f.id for f in self.store.facts(owner, include_inactive=True) if accept is None or accept(f)]
        deleted = self.store.delete(ids, owner, actor="api")
        return {"message": "Memories deleted successfully!", "deleted": deleted}

    def reset(self) -> dict[str, Any]:
        """Delete every memory of every user (the history keeps them)."""
        deleted = sum(self.store.delete_all(owner, actor="api") for owner in self.store.users())
        return {"message": "Memory store reset successfully!", "deleted": deleted}

    # --- reading -----------------------------------------------------------------------------
    def search(self, query: str, user_id: str | None = None, *, user: str | None = None, agent_id: str | None = None,
               run_id: str | None = None, limit: int | None = None, top_k: int | None = None,
               filters: dict[str, Any] | None = None, threshold: float | None = None,
               min_similarity: float | None = None, rerank: bool = False, explain: bool = False
               ) -> dict[str, list[dict[str, Any]]]:
        """The owner's live memories ranked for `query` (hybrid: vectors + BM25), best first.

        `limit` / `top_k` caps the results (mem0's default, 20); `threshold` (alias `min_similarity`)
        is the lowest relevance kept (mem0's default, 0.1); `filters` narrows them
        (`memlm.facts.filters`). Superseded, expired and deleted memories are never returned; an
        owner with no memories yet gets `{"results": []}`. Each result has mem0's keys (`id`,
        `memory`, `hash`, `metadata`, `score`, `created_at`, `updated_at`, `user_id`, ...) and
        memlm's (`similarity`, `lexical`, `importance`, `category`, ...), which explain every score
        (so `explain=True` adds nothing); memlm has no separate re-ranker (`rerank` changes nothing).
        """
        count = _count(limit, top_k, DEFAULT_TOP_K)
        floor = _threshold(threshold, min_similarity)
        floor = DEFAULT_THRESHOLD if floor is None else floor
        owner = self._owner(user_id, user, agent_id, run_id, filters, required=True)
        accept = self._accept(filters, agent_id, run_id)
        query = check_text(query, "query")
        if not self.store.has_user(owner):
            self._refuse_cross_user_scope(owner, user_id, user, filters)
            return {"results": []}
        hits = self.bank.retrieve(query, count, owner, min_similarity=floor, accept=accept)
        return {"results": [{**_memory(hit.fact), "score": hit.score, "similarity": hit.similarity,
                             "lexical": hit.lexical} for hit in hits]}

    def get_all(self, user_id: str | None = None, *, user: str | None = None, agent_id: str | None = None,
                run_id: str | None = None, filters: dict[str, Any] | None = None, limit: int | None = None,
                top_k: int | None = None, category: str | None = None, show_expired: bool = False,
                include_superseded: bool = False) -> dict[str, list[dict[str, Any]]]:
        """The owner's memories, oldest first: live ones only, unless `show_expired` /
        `include_superseded` (then each has its `status` and `expires_at` to tell them apart). All
        of them unless `limit` / `top_k` is given; an owner with no memories yet gets `{"results": []}`."""
        count = _count(limit, top_k, None)
        owner = self._owner(user_id, user, agent_id, run_id, filters, required=True)
        accept = self._accept(filters, agent_id, run_id)
        if not self.store.has_user(owner):
            self._refuse_cross_user_scope(owner, user_id, user, filters)
            return {"results": []}
        now = self.store.clock()
        facts = [f for f in self.store.facts(owner, category=category, include_inactive=True)
                 if (include_superseded or f.status == "active") and (show_expired or not f.expired(now))
                 and (accept is None or accept(f))]
        return {"results": [_memory(f) for f in facts[:count]]}

    def get(self, memory_id: int | str, user_id: str | None = None, *, user: str | None = None) -> dict[str, Any]:
        """One memory by id, whatever its status. With a user, another user's id reads as missing
        (`FactNotFoundError`), as does an unknown id."""
        return _memory(self._get(memory_id, user_id, user))

    def history(self, memory_id: int | str, user_id: str | None = None, *, user: str | None = None
                ) -> list[dict[str, Any]]:
        """Every change of a memory, oldest first: ADD, UPDATE, SUPERSEDE (with the reason and the
        new memory), DELETE; in mem0's shape (`memory_id`, `old_memory`, `new_memory`, `event`,
        `created_at`, `is_deleted`, ...) plus memlm's (`action`, `actor`, `time`, `reason`)."""
        fact_id = check_id(memory_id)
        owner = self._owner(user_id, user, None, None, None, required=False)
        return [_change(change) for change in self.store.history(fact_id, user=owner)]

    def users(self) -> list[str]:
        return self.store.users()

    # --- helpers -----------------------------------------------------------------------------
    def _get(self, memory_id: Any, user_id: str | None, user: str | None) -> Fact:
        owner = self._owner(user_id, user, None, None, None, required=False)
        return self.store.get(check_id(memory_id), user=owner)

    @staticmethod
    def _owner(user_id: str | None, user: str | None, agent_id: str | None, run_id: str | None,
               filters: dict[str, Any] | None, required: bool) -> str | None:
        """Whose memories a call reads or writes: `user_id` / `user` / `filters["user_id"]`, else the
        agent's or the run's own namespace."""
        named = {value for value in (user_id, user) if value is not None}
        if isinstance(filters, dict) and isinstance(filters.get("user_id"), str):
            named.add(filters["user_id"])
        elif isinstance(filters, dict) and isinstance(filters.get("AND"), list):
            # mem0 also names the user as one condition of an AND: {"AND": [{"user_id": "alice"}, ...]}
            named |= {part["user_id"] for part in filters["AND"]
                      if isinstance(part, dict) and isinstance(part.get("user_id"), str)}
        elif isinstance(filters, dict) and "user_id" in filters:
            raise ConfigError("filters['user_id'] must be one user id (a string): memlm searches one user at a time")
        if len(named) > 1:
            raise ConfigError(f"conflicting user ids {sorted(named)}")
        if named:
            return check_name(named.pop(), "user id")
        for kind, value in (("agent", agent_id), ("run", run_id)):
            if value is None and isinstance(filters, dict) and isinstance(filters.get(f"{kind}_id"), str):
                value = filters[f"{kind}_id"]
            if value is not None:
                return check_name(f"{kind}.{check_name(value, f'{kind}_id')}", f"{kind}_id")
        if required:
            raise ConfigError("say whose memories: user_id= (or user=), agent_id= or run_id=")
        return None

    def _last_message_of_run(self, owner: str, run_id: str | None) -> str | None:
        """The message the next turn of a run follows (its source: "name: text"), if the run has one."""
        if run_id is None:
            return None
        latest = self.store.latest_in_run(owner, run_id) if self.store.has_user(owner) else None
        return None if latest is None else latest.source

    def _refuse_cross_user_scope(self, owner: str, user_id: str | None, user: str | None,
                                 filters: dict[str, Any] | None) -> None:
        """mem0 lets a call scoped by `agent_id` / `run_id` alone reach every user's memories of that
        agent or run; memlm keeps users apart. When the agent (run) has no memories of its own but
        users' memories carry its id, say so rather than answer with an empty list that looks like
        mem0's."""
        named_user = user_id is not None or user is not None or (isinstance(filters, dict) and "user_id" in filters)
        if named_user or not owner.startswith(("agent.", "run.")):
            return
        kind, value = owner.split(".", 1)
        if self.store.scope_in_other_owners(f"{kind}_id", value, owner):
            raise ConfigError(
                f"{kind}_id {value!r} has no memories of its own; the memories that carry it belong to users, "
                f"and memlm searches one user at a time (isolation: no search across users by {kind}_id alone). "
                f"Add user_id=... (or filters={{'user_id': ...}}) to search a user's memories of this {kind}.")

    @staticmethod
    def _accept(filters: dict[str, Any] | None, agent_id: str | None, run_id: str | None
                ) -> Callable[[Fact], bool] | None:
        scoped = {key: value for key, value in (("agent_id", agent_id), ("run_id", run_id)) if value is not None}
        base = compile_filters(filters, skip=("user_id",))
        extra = compile_filters(scoped) if scoped else None
        if base is None or extra is None:
            return base or extra
        return lambda fact: base(fact) and extra(fact)

    def _expiry(self, expires_at: Any, ttl: Any, expiration_date: Any) -> float | None:
        given = [value for value in (expires_at, ttl, expiration_date) if value is not None]
        if len(given) > 1:
            raise ConfigError("give one of expires_at, ttl and expiration_date")
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
                raise ConfigError(f"ttl must be a positive number of seconds, got {ttl!r}")
            return self.store.clock() + float(ttl)
        value = expires_at if expires_at is not None else expiration_date
        return None if value is None else to_unix_time(value, "expires_at")


def _count(limit: Any, top_k: Any, default: int | None) -> int | None:
    if limit is not None and top_k is not None and limit != top_k:
        raise ConfigError("give limit or top_k, not both")
    value = limit if limit is not None else top_k
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"limit / top_k must be a positive integer, got {value!r}")
    return value


def _threshold(threshold: Any, min_similarity: Any) -> float | None:
    if threshold is not None and min_similarity is not None:
        raise ConfigError("give threshold or min_similarity, not both")
    value = threshold if threshold is not None else min_similarity
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 10.0:
        raise ConfigError(f"threshold must be a number within [-1, 10], got {value!r}")
    return float(value)


def _as_messages(messages: Messages) -> list[tuple[str, str, str | None]]:
    """(role, content, name) of each message; a bare string is the user's."""
    if isinstance(messages, (str, bytes, bytearray)):
        return [("user", check_text(messages, "message", MAX_SOURCE_CHARS), None)]
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        raise ConfigError(f"messages must be text (str), a message dict or a list of them, "
                          f"got {type(messages).__name__}")
    pairs = []
    for message in messages:
        if not isinstance(message, dict) or "content" not in message:
            raise ConfigError(f"each message must be a dict with 'role' and 'content', got {message!r:.80}")
        role, name = message.get("role", "user"), message.get("name")
        if not isinstance(role, str) or (name is not None and not isinstance(name, str)):
            raise ConfigError(f"a message's role and name must be strings, got {message!r:.80}")
        pairs.append((role, check_text(message["content"], "message", MAX_SOURCE_CHARS), name))
    return pairs


def memory_hash(text: str) -> str:
    """mem0's `hash` of a memory: the MD5 of its text."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _memory(fact: Fact) -> dict[str, Any]:
    values = fact.to_dict()
    values["memory"] = values.pop("text")
    owner = fact.user
    values.update(hash=memory_hash(fact.text), metadata=fact.metadata or {}, created_at=iso_time(fact.created),
                  updated_at=iso_time(fact.updated if fact.updated is not None else fact.created),
                  user_id=None if owner.startswith(("agent.", "run.")) and (fact.agent_id or fact.run_id) else owner)
    return values


def _event(result: LearnResult, role: str, name: str | None) -> dict[str, Any]:
    fact = result.fact
    event = "NONE" if not result.stored else ("UPDATE" if result.superseded else "ADD")
    entry = {"id": fact.id if fact else None, "memory": fact.text if fact else None, "event": event,
             "reason": result.reason, "role": role, "actor_id": name}
    if result.superseded:
        entry["previous_memory"] = " ".join(old.text for old in result.superseded)
        entry["previous_ids"] = [old.id for old in result.superseded]
    return entry


_EVENTS = {"add": "ADD", "update": "UPDATE", "delete": "DELETE", "supersede": "SUPERSEDE"}


def _change(change: FactChange) -> dict[str, Any]:
    when = iso_time(change.time)
    return {**change.to_dict(), "memory_id": change.fact_id, "old_memory": change.old_text,
            "new_memory": change.new_text, "event": _EVENTS.get(change.action, change.action.upper()),
            "created_at": when, "updated_at": when, "is_deleted": change.action == "delete",
            "actor_id": change.actor, "role": None}


class AsyncMemory:
    """`FactMemory` for asyncio code, as mem0's `AsyncMemory`: the same methods, awaited. Each call
    runs in a worker thread (the store serialises them), so the event loop never waits on SQLite or
    on the encoder.

    Example:
        >>> memory = AsyncMemory()
        >>> await memory.add("I live in Oslo.", user_id="ada")
        >>> await memory.search("Where do I live?", user_id="ada")
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.memory = FactMemory(*args, **kwargs)

    @classmethod
    def from_config(cls, config_dict: dict[str, Any]) -> AsyncMemory:
        instance = cls.__new__(cls)
        instance.memory = FactMemory.from_config(config_dict)
        return instance

    def close(self) -> None:
        self.memory.close()

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.close()


def _awaitable(name: str) -> Callable[..., Any]:
    method = getattr(FactMemory, name)

    @functools.wraps(method)
    async def call(self: AsyncMemory, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.memory, name), *args, **kwargs)

    return call


for _name in ("add", "search", "get_all", "get", "update", "delete", "delete_all", "history", "reset", "users"):
    setattr(AsyncMemory, _name, _awaitable(_name))
