"""The model behind the server: one `MemoryModel`, one worker thread, per-user memory.

Everything that touches the model runs on a single worker thread, one job at a time, first come
first served: a chat turn, one segment of a document being memorized, a document deleted. The HTTP
layer stays responsive (it only waits on futures and queues), and a long document does not block
chats: it is memorized one segment per job, so a chat waits at most one segment. With `batch_size` > 1,
chat turns that can share a batch are decoded together by `memlm.server.batching` (continuous batching,
still on this one thread); the others run here, one at a time.

Per user:

* the `bank` (if attached) reads and writes the user's facts in the shared fact store: each turn
  retrieves the facts for the last user message into the prompt and learns the facts it states;
* the other memories (`recurrent`, `knn`, ...) hold state; each user's is saved under
  `<home>/users/<user>/sessions/server.<memories>/` and loaded when that user's job comes up, so
  one user's state never shapes another user's answer.

A "model" of the OpenAI API is the backbone plus a subset of the attached memories
(`SmolLM2-135M-Instruct+bank+recurrent`); memories outside the subset have their hooks removed for
the job and neither read nor write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from memlm.errors import ConfigError
from memlm.memories.base import FileState
from memlm.memories.knn import CONTEXT_TOKENS
from memlm.model import STATE_FILE, MemoryModel
from memlm.paths import check_name, user_dir
from memlm.server.errors import ApiError
from memlm.server.generation import (
    Cancelled,
    LogitBias,
    OpenAIPenalties,
    StopTrimmer,
    Streamer,
    cut_at_stop,
    eos_ids,
    hit_stop,
)

logger = logging.getLogger("memlm.server")

KV_MEMORY = "knn"
JOURNAL_FILE = "pending_turns.jsonl"  # turns answered whose state is not saved yet (replayed after a crash)
LORA = "lora"  # a LoRA adapter on the backbone (the chat preset's) is a part of model ids like a memory


def slug(name: str) -> str:
    """A model id from a backbone name or path: its last component, safe in a URL."""
    last = re.split(r"[\\/]", name.rstrip("/\\"))[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-") or "model"


@dataclass
class ChatJob:
    """One chat completion: what to answer, for whom, how; and where to send what happens."""

    user: str
    messages: list[dict[str, str]]
    memories: tuple[str, ...]
    generation: dict[str, Any]
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    learn: bool = True
    emit: Callable[[tuple[str, Any]], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


class TurnEmbeddings:
    """The bank's embedding function for one turn: the query and the sentences the turn will learn from
    are embedded in one batch when the turn starts (one sentence-encoder call instead of one per text);
    texts it was not told about are embedded as usual."""

    def __init__(self, embed: Callable[[list[str]], Any], texts: list[str]):
        self.embed = embed
        unique = list(dict.fromkeys(t for t in texts if t))
        self.cache = dict(zip(unique, embed(unique), strict=True)) if unique else {}

    def __call__(self, texts: list[str]) -> Any:
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embed(missing), strict=True))
        return np.stack([self.cache[t] for t in texts])


class Engine:
    """Runs every model job of the server on one worker thread (see the module docstring).

    Args:
        model: the backbone with every memory the server offers attached.
        tokenizer: its tokenizer (must have a chat template).
        home: where per-user state lives (`memlm.paths.home_dir()`).
        name: the backbone's name in model ids (default: from the backbone's config).
        max_queue: jobs waiting at most; beyond, requests get 503 "server busy".
        batch_size: chat turns decoded together at most (`memlm.server.batching`); 0 or 1: one at a time.
    """

    def __init__(self, model: MemoryModel, tokenizer: Any, home: Path, name: str | None = None,
                 max_queue: int = 64, default_generation: dict[str, Any] | None = None, batch_size: int = 0):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError("the tokenizer has no chat template: the server needs a chat model")
        self.model, self.tokenizer, self.home = model, tokenizer, Path(home)
        self.name = slug(name or str(model.fingerprint.get("name") or "model"))
        self.memory_names = tuple(model.memories) + ((LORA,) if model.lora is not None else ())
        self.stateful = tuple(n for n in self.memory_names if n not in ("bank", LORA))
        self.state_name = "server." + ".".join(sorted(self.stateful)) if self.stateful else "server"
        self.max_queue = max_queue
        self.default_generation = {"max_new_tokens": 128, "do_sample": False, "repetition_penalty": 1.1,
                                   **(default_generation or {})}
        self.context_length = int(getattr(model.backbone.config, "max_position_embeddings", 0) or 2048)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memlm-model")
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._loaded_user: str | None = None
        self._dirty = False
        self._ids = itertools.count(1)
        self.jobs_done = 0
        self.batcher: Any = None
        if batch_size > 1:
            from memlm.server.batching import Batcher, model_blocker

            reason = model_blocker(model)
            if reason is None:
                self.batcher = Batcher(self, batch_size)
            else:
                logger.warning("chat turns run one at a time: this backbone cannot batch (%s)", reason)

    # --- models -----------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        """The default model (every memory) first — a client that takes the first model gets the
        memory — then the backbone alone, each memory alone and every larger combination (attach order)."""
        names = self.memory_names
        subsets = [combo for size in range(len(names) + 1) for combo in itertools.combinations(names, size)]
        return [self.default_model, *(self.model_id(combo) for combo in subsets if combo != names)]

    def model_id(self, memories: tuple[str, ...]) -> str:
        return "+".join([self.name, *memories])

    @property
    def default_model(self) -> str:
        return self.model_id(self.memory_names)

    def resolve_model(self, model: str | None) -> tuple[str, ...]:
        """The memories a model id names; 404 for an id this server does not offer."""
        if model is None or model == "" or model == "default":
            return self.memory_names
        for combo in (c for size in range(len(self.memory_names) + 1)
                      for c in itertools.combinations(self.memory_names, size)):
            if self.model_id(combo) == model:
                return combo
        raise ApiError(404, f"model {model!r} not found; GET /v1/models lists this server's models",
                       "model_not_found", "model")

    @property
    def has_documents(self) -> bool:
        return KV_MEMORY in self.model.memories

    # --- the worker ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def reserve(self, force: bool = False) -> None:
        """Count one more job waiting or running; 503 when `max_queue` already do (unless `force`)."""
        with self._pending_lock:
            if self._pending >= self.max_queue and not force:
                raise ApiError(503, f"server busy: {self._pending} jobs queued; retry shortly", "server_busy",
                               headers={"Retry-After": "1"})
            self._pending += 1

    def release(self) -> None:
        """A job counted by `reserve` is done."""
        with self._pending_lock:
            self._pending -= 1
        self.jobs_done += 1

    def submit(self, fn: Callable[..., Any], *args: Any, force: bool = False) -> Future:
        """Queue `fn(*args)` on the worker; 503 when `max_queue` jobs already wait (unless `force`)."""
        self.reserve(force)

        def run() -> Any:
            try:
                return fn(*args)
            finally:
                self.release()

        try:
            return self._executor.submit(run)
        except RuntimeError:  # shut down: it never runs
            with self._pending_lock:
                self._pending -= 1
            raise

    def submit_chat(self, job: ChatJob) -> None:
        """Queue a chat turn: into the batch when batching is on and the turn can join one
        (`batching.job_blocker`), else as one job of its own."""
        if self.batcher is not None and self.batcher.accepts(job):
            self.batcher.add(job)
        else:
            self.submit(self.chat, job)

    async def run(self, fn: Callable[..., Any], *args: Any, force: bool = False) -> Any:
        return await asyncio.wrap_future(self.submit(fn, *args, force=force))

    def close(self) -> None:
        """Finish queued jobs, save the loaded user's state, stop the worker."""
        with contextlib.suppress(RuntimeError):
            self._executor.submit(self._save_if_dirty).result()
        self._executor.shutdown(wait=True)

    # --- per-user state (worker thread only) ----------------------------------------------------
    def state_dir(self, user: str) -> Path:
        return user_dir(user, self.home) / "sessions" / self.state_name

    def _save_if_dirty(self) -> None:
        if self._dirty and self._loaded_user is not None:
            directory = self.state_dir(self._loaded_user)
            self.model.save_state(directory)
            (directory / JOURNAL_FILE).unlink(missing_ok=True)  # what it held is in the saved state now
            self._dirty = False

    def _journal(self, user: str, query: str, reply: str, memories: tuple[str, ...]) -> None:
        """Append a turn whose write pass is not saved yet to the user's journal, durably (fsync)."""
        directory = self.state_dir(user)
        directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"user": query, "assistant": reply, "memories": list(memories)}, ensure_ascii=False)
        with (directory / JOURNAL_FILE).open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _replay_journal(self, user: str) -> None:
        """Write the turns a crash left in the journal (answered, not yet in the saved state), then save."""
        path = self.state_dir(user) / JOURNAL_FILE
        if not path.exists():
            return
        replayed = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                turn = json.loads(line)
                self._apply_turn(str(turn["user"]), str(turn["assistant"]), tuple(turn["memories"]))
                replayed += 1
            except (ValueError, KeyError, TypeError):  # a torn last line: that turn was never answered
                logger.warning("skipping a damaged line of %s", path)
        logger.info("replayed %d journaled turn(s) of %s", replayed, user)
        self._dirty = True
        self._save_if_dirty()

    def _ensure_user(self, user: str) -> None:
        """Make the memories hold `user`'s state (the bank only needs to know who it serves)."""
        check_name(user, "user id")
        self.model.set_provenance(user=user)
        if not self.stateful or self._loaded_user == user:
            return
        self._save_if_dirty()
        self._loaded_user = None
        for name in self.stateful:
            memory = self.model.memories[name]
            store = getattr(memory, "store", None) if isinstance(memory, FileState) else None
            if store is not None:
                # A store loaded from the previous user's folder writes there: let go of it (never clear it
                # in place), so that nothing of the next user ever lands in that folder.
                store.close()
                memory.store = None
            memory.reset()
        directory = self.state_dir(user)
        if (directory / STATE_FILE).exists():
            self.model.load_state(directory)
        self._loaded_user = user
        self._replay_journal(user)

    @contextlib.contextmanager
    def _only(self, active: tuple[str, ...]) -> Iterator[None]:
        """Memories outside `active` neither read nor write for a while (their hooks are removed); the
        LoRA adapter, if outside, is switched off (the backbone computes what it would bare)."""
        paused = [memory for name, memory in self.model.memories.items() if name not in active]
        lora_off = self.model.lora is not None and LORA not in active
        for memory in paused:
            memory.remove_hooks()
        if lora_off:
            self.model.lora.enable(False)
        try:
            yield
        finally:
            if lora_off:
                self.model.lora.enable(True)
            for memory in paused:
                memory.attach(self.model.layout)

    def warm_up(self) -> None:
        """Load what the first request would otherwise wait for (the sentence encoder of the bank)."""
        if "bank" in self.model.memories:
            self.model.memories["bank"].embed(["warm up"])

    @contextlib.contextmanager
    def _turn_embeddings(self, bank: Any, query: str) -> Iterator[None]:
        """While a turn runs, the bank embeds from one batch made at its start (`TurnEmbeddings`)."""
        if bank is None or not query:
            yield
            return
        from memlm.facts.extraction import extract_facts

        facts = bank.facts
        original = facts.embed
        facts.embed = TurnEmbeddings(original, [query, *(fact.sentence for fact in extract_facts(query))])
        try:
            yield
        finally:
            facts.embed = original

    # --- chat --------------------------------------------------------------------------------
    def chat(self, job: ChatJob) -> None:
        """One chat completion (worker thread): events go to `job.emit`:
        ("start", info), ("delta", text)..., then ("end", info) or ("error", exception)."""
        try:
            self._chat(job)
        except BaseException as error:  # noqa: BLE001 - every failure reaches the client as an event
            job.emit(("error", error))

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> torch.Tensor:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        return ids.to(self.model.layout.device)

    @torch.no_grad()
    def _chat(self, job: ChatJob) -> None:
        timings = {"queue_ms": (time.perf_counter() - job.submitted) * 1000}
        if job.cancelled.is_set():
            job.emit(("error", ApiError(499, "client closed the request", "cancelled")))
            return
        start = time.perf_counter()
        self._ensure_user(job.user)
        self.model.set_provenance(user=job.user, session="chat")
        timings["state_load_ms"] = (time.perf_counter() - start) * 1000
        bank = self.model.memories["bank"] if "bank" in job.memories else None
        query = next((m["content"] for m in reversed(job.messages) if m["role"] == "user"), "").strip()
        # The memory's read: the turn's one batch of embeddings, then the search. Timed on the clock and in
        # this thread's CPU time (which other processes taking the CPU do not inflate).
        start, cpu = time.perf_counter(), time.thread_time()
        with self._only(job.memories), self._turn_embeddings(bank, query if job.learn else ""), \
                (bank.facts.turn() if bank is not None and job.learn else contextlib.nullcontext()):
            messages, used = job.messages, []
            if bank is not None and query.strip():
                messages, used = bank.augment_messages(job.messages, query)
            timings["memory_search_ms"] = (time.perf_counter() - start) * 1000
            timings["memory_search_cpu_ms"] = (time.thread_time() - cpu) * 1000
            prompt_ids = self._template(messages, add_generation_prompt=True)
            max_new = int(job.generation.get("max_new_tokens", 128))
            if prompt_ids.shape[1] + max_new > self.context_length:
                raise ConfigError(f"the prompt is {prompt_ids.shape[1]:,} tokens; with max_tokens={max_new} it "
                                  f"exceeds the model's context of {self.context_length:,} tokens")
            job.emit(("start", {"memories": [_used(hit) for hit in used], "prompt_tokens": int(prompt_ids.shape[1]),
                                "timings": dict(timings)}))
            trimmer = StopTrimmer(job.stop)
            first_token: list[float] = []
            generate_start = time.perf_counter()

            def on_text(text: str) -> None:
                if not first_token:
                    first_token.append(time.perf_counter())
                piece = trimmer.feed(text)
                if piece:
                    job.emit(("delta", piece))

            if job.seed is not None:
                torch.manual_seed(job.seed)
            processors = LogitsProcessorList()
            if job.presence_penalty or job.frequency_penalty:
                processors.append(OpenAIPenalties(job.presence_penalty, job.frequency_penalty))
            if job.logit_bias:
                processors.append(LogitBias(job.logit_bias))
            criteria = StoppingCriteriaList([Cancelled(job.cancelled)])
            extra: dict[str, Any] = {}
            if job.stop:
                extra = {"stop_strings": job.stop, "tokenizer": self.tokenizer}
            output = self.model.generate(
                input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), write_memory=False,
                streamer=Streamer(self.tokenizer, on_text), logits_processor=processors,
                stopping_criteria=criteria, pad_token_id=self.tokenizer.pad_token_id, **extra, **job.generation)
            generated = output[0, prompt_ids.shape[1]:]
            timings["generate_ms"] = (time.perf_counter() - generate_start) * 1000
            timings["first_token_ms"] = ((first_token[0] if first_token else time.perf_counter())
                                         - generate_start) * 1000 + timings["memory_search_ms"]
            tail = trimmer.flush()
            if tail:
                job.emit(("delta", tail))
            reply = self.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            reply = cut_at_stop(reply, job.stop).strip()
            eos = eos_ids(self.model.backbone.generation_config, self.tokenizer)
            ended = bool(len(generated)) and int(generated[-1]) in eos
            finish = "stop" if ended or trimmer.stopped or hit_stop(self.tokenizer.decode(generated), job.stop) \
                else ("length" if len(generated) >= max_new else "stop")
            learned: list[Any] = []
            pending: tuple[str, ...] = ()
            start, cpu = time.perf_counter(), time.thread_time()
            if job.learn and not job.cancelled.is_set() and query.strip():
                if bank is not None:
                    # The turn's one transaction: the facts it learns and the touches of its retrieval
                    # (held back by `bank.facts.turn()`; a turn that fails or is cancelled writes them
                    # when it ends).
                    learned = bank.observe_turn(query, reply)
                    bank.facts.flush_touches()
                timings["memory_write_ms"] = (time.perf_counter() - start) * 1000
                timings["memory_write_cpu_ms"] = (time.thread_time() - cpu) * 1000
                if any(name not in ("bank", LORA) for name in job.memories):
                    pending = job.memories
                    # The stateful memories' write pass and state save come after the answer (off the
                    # response path); the turn is journaled durably first, so a crash in between loses
                    # nothing: the next load replays it (`_replay_journal`).
                    start = time.perf_counter()
                    self._journal(job.user, query, reply, pending)
                    timings["journal_ms"] = (time.perf_counter() - start) * 1000
            else:
                timings["memory_write_ms"] = timings["memory_write_cpu_ms"] = 0.0
        timings["total_ms"] = (time.perf_counter() - job.submitted) * 1000
        job.emit(("end", {"reply": reply, "finish_reason": finish,
                          "usage": {"prompt_tokens": int(prompt_ids.shape[1]), "completion_tokens": int(len(generated)),
                                    "total_tokens": int(prompt_ids.shape[1] + len(generated))},
                          "learned": [_learned(result) for result in learned], "timings": timings}))
        if pending:
            self._write_after_answer(job.user, query, reply, pending)

    def _write_after_answer(self, user: str, query: str, reply: str, memories: tuple[str, ...]) -> None:
        """The stateful memories' write pass and save, after the turn's end was sent. A failure here can
        no longer reach the client (its answer is out) and loses nothing (the turn is journaled): it is
        logged, and the in-memory states are dropped so that the next load replays the journals over
        the saved states instead of saving a state the failure may have left half-written."""
        start = time.perf_counter()
        try:
            self._ensure_user(user)
            self._apply_turn(query, reply, memories)
            self._save_if_dirty()
        except Exception:  # noqa: BLE001 - see above: logged, and recovered from the journal
            logger.exception("the memory state after %s's answer was not written or saved; the journaled turn "
                             "is replayed at the next load", user)
            self._loaded_user, self._dirty = None, False
            return
        logger.debug("state of %s written after the answer in %.1f ms", user, (time.perf_counter() - start) * 1000)

    def _apply_turn(self, query: str, reply: str, memories: tuple[str, ...]) -> None:
        """One turn's write pass, read through `memories` (the job's), into its stateful memories (the bank
        learned the turn's facts already and stores no segment of it)."""
        bank = self.model.memories["bank"] if "bank" in memories and "bank" in self.model.memories else None
        turn = [{"role": "user", "content": query}, {"role": "assistant", "content": reply}]
        with self._only(tuple(memories)), \
                self.model.segment_writes(False, [bank] if bank is not None else []):
            self.model.write(self._template(turn, add_generation_prompt=False))
        self._dirty = True

    # --- documents (worker thread) ------------------------------------------------------------
    def kv_memory(self) -> Any:
        if not self.has_documents:
            raise ApiError(409, "this server has no key/value memory for documents: start it with "
                                "`memlm serve --memory bank,knn-joint` (any memory list that includes knn)",
                           "no_document_memory")
        return self.model.memories[KV_MEMORY]

    def document_tokens(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]

    @torch.no_grad()
    def memorize_segment(self, user: str, document: str, ids: torch.Tensor, first: bool) -> None:
        """Write one segment of a document into the user's key/value memory (worker thread)."""
        self.kv_memory()
        self._ensure_user(user)
        self.model.set_provenance(user=user, session=document)
        with self._only((KV_MEMORY,)):
            if first:
                self.model.memories[KV_MEMORY].begin_call()  # one sequence per document
            self.model.write(ids.unsqueeze(0).to(self.model.layout.device))
        self._dirty = True

    def save_state(self, user: str) -> None:
        """Persist `user`'s state now if it is the loaded one and changed (worker thread)."""
        if self._loaded_user == user:
            self._save_if_dirty()

    def delete_document(self, user: str, document: str) -> int:
        memory = self.kv_memory()
        self._ensure_user(user)
        deleted = memory.delete(user=user, session=document)
        if deleted:
            self._dirty = True
            self._save_if_dirty()
        return deleted

    def search_documents(self, user: str, query: str, limit: int) -> list[dict[str, Any]]:
        """Items of the user's key/value memory whose text (a token and its context) contains `query`."""
        from memlm.store import RecordFilter

        memory = self.kv_memory()
        self._ensure_user(user)
        if memory.store is None:
            return []
        groups = memory.store.records.stats()["groups"]
        if not groups:
            return []
        kind, layer = groups[0]["kind"], groups[0]["layer"]  # one layer's records: every layer repeats them
        # A text spanning several tokens matches every record whose context window covers it: keep the
        # first record of each run of neighbouring positions, one hit per occurrence.
        records = memory.store.records.select(RecordFilter(user=user, text=query, kind=kind, layer=layer),
                                              limit=limit * (CONTEXT_TOKENS + 1))
        hits: list[dict[str, Any]] = []
        last: tuple[str | None, int] = (None, -(10**9))
        for record in records:
            if not record.session:
                continue
            if record.session != last[0] or record.position - last[1] > CONTEXT_TOKENS:
                hits.append({"document_id": record.session, "position": record.position, "text": record.text,
                             "context": record.context})
            last = (record.session, record.position)
        return hits[:limit]

    def document_items(self, user: str) -> dict[str, int]:
        """Items per document in the user's key/value memory (one layer's count)."""
        memory = self.kv_memory()
        self._ensure_user(user)
        if memory.store is None:
            return {}
        groups = memory.store.records.stats()["groups"]
        if not groups:
            return {}
        kind, layer = groups[0]["kind"], groups[0]["layer"]
        return {g["session"]: g["records"] for g in groups
                if g["kind"] == kind and g["layer"] == layer and g["session"]}


def _used(hit: Any) -> dict[str, Any]:
    fact = hit.fact
    return {"id": fact.id, "memory": fact.text, "category": fact.category, "score": round(float(hit.score), 4),
            "similarity": round(float(hit.similarity), 4)}


def _learned(result: Any) -> dict[str, Any]:
    fact = result.fact
    return {"id": fact.id if fact else None, "memory": fact.text if fact else None,
            "event": "ADD" if result.stored else "NONE", "reason": result.reason}
