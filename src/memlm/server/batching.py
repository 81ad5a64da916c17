"""Continuous batching of chat turns: concurrent turns decode together, one forward pass per step.

The one-at-a-time path (`Engine.chat`) runs `model.generate` for one turn while every other turn waits.
Here chat turns that can share a batch are decoded by one loop on the same worker thread:

* a turn that arrives while a batch decodes is prefilled at the next step boundary and its key/value
  cache joins the batch's (left-padded to the longer of the two; the attention mask hides the padding
  and each row keeps its own position ids), so rows join and leave independently;
* each row keeps its own sampling settings and logits processors (repetition penalty, OpenAI
  penalties, `logit_bias`, the bank's fact-token bonus), stop strings, streaming callback, cancellation
  and its user's memory: the bank's facts go into that row's prompt (per-row text), and a `recurrent`
  state, loaded for that row's user, is stacked with the other rows' states (the memory reads one row
  per batch row);
* when a row ends, its turn ends exactly as on the one-at-a-time path: the bank learns in one
  transaction with the touches of its retrieval, stateful memories journal the turn, the answer ends,
  then the write pass and the state save run.

Which turns join a batch (`job_blocker`): those whose memories are a subset of `bank` (prompt fusion),
`recurrent` and the LoRA adapter, and whose decoding options are the server's (`SUPPORTED_GENERATION`).
The others (`knn`, `slots`, `importance`: state that is not one row per user, or rewrites the input)
run on the one-at-a-time path, between batch steps. Turns for different subsets of these memories share
a batch (a row that does not use the bank gets no facts; one that does not use `recurrent` reads a zero
state, which adds exactly nothing); only the LoRA adapter, on or off for the whole backbone, splits
them: a turn that needs it set the other way waits until the batch drains. A turn that uses `recurrent`
waits while its user has a row, so that a user's turns see each other's writes in order, as unbatched.

Greedy rows give the tokens the one-at-a-time path gives (tests/server/test_batching.py), up to
float rounding of the padded attention, which can flip a near-tie.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import inspect
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.stopping_criteria import StopStringCriteria

from memlm.memories.base import PromptFusion
from memlm.server.engine import LORA, TurnEmbeddings, _learned, _used
from memlm.server.errors import ApiError
from memlm.server.generation import StopTrimmer, Streamer, cut_at_stop, eos_ids, hit_stop
from memlm.server.row_logits import dense_bias, row_generator, row_processors

if TYPE_CHECKING:
    from memlm.server.engine import ChatJob, Engine

logger = logging.getLogger("memlm.server")

BATCHED_MEMORIES = frozenset({"bank", "recurrent", LORA})
ROW_STATE_MEMORIES = ("recurrent",)  # memories whose read state is one tensor row per user (`state`)
SUPPORTED_GENERATION = frozenset({"max_new_tokens", "do_sample", "temperature", "top_p", "top_k",
                                  "repetition_penalty"})
HISTORY_PAD = torch.iinfo(torch.long).max  # clamped to the vocabulary size: a column no token maps to
STEPS_PER_JOB = 16  # decode steps per worker job: document segments interleave between them


def model_blocker(model: Any) -> str | None:
    """Why this backbone cannot batch at all (None: it can). Joining rows left-pads key/value caches,
    which needs a plain growing cache on every layer (sliding-window layers drop old positions)."""
    try:
        layers = DynamicCache(config=model.backbone.config).layers
    except Exception as error:  # noqa: BLE001 - any failure means: not this path
        return f"its cache cannot be built ({type(error).__name__})"
    if any(type(layer) is not DynamicLayer for layer in layers):
        return "its key/value cache has sliding-window layers"
    return None


def job_blocker(engine: Engine, job: ChatJob) -> str | None:
    """Why `job` runs on the one-at-a-time path (None: it can join a batch)."""
    others = sorted(set(job.memories) - BATCHED_MEMORIES)
    if others:
        return f"memories {others} keep state that is not one row per user"
    if "bank" in job.memories and engine.model.memories["bank"].config.uses_latent:
        return "the bank's latent fusion reads per step"
    if "recurrent" in job.memories and engine.model.memories["recurrent"].config.mode == "ephemeral":
        return "an ephemeral recurrent memory resets per call"
    unsupported = sorted(set(job.generation) - SUPPORTED_GENERATION)
    if unsupported:
        return f"decoding options {unsupported}"
    return None


@dataclass
class Row:
    """One chat turn in the batch: what it decodes, how, and what its turn holds until it ends."""

    job: ChatJob
    query: str
    timings: dict[str, float]
    bank: Any
    embeddings: Any
    touches: list[Any]
    used: list[Any]
    prompt_ids: torch.Tensor  # (1, T_prompt)
    max_new: int
    penalty: float  # the repetition penalty (1.0: none), applied to every row at once
    middle: list[Any]  # processors after the penalty that read the row's tokens (OpenAI penalties)
    bias_sources: list[Any]  # then fixed additive biases (`logit_bias`, the bank's fact tokens), in order
    warpers: list[Any]  # then sampling's (temperature, top-k, top-p)
    generator: torch.Generator | None  # sampling rows: their own random stream
    stop_criteria: Any
    trimmer: StopTrimmer
    streamer: Streamer
    states: dict[str, torch.Tensor] = field(default_factory=dict)  # (1, ...) per row-state memory
    tokens: list[int] = field(default_factory=list)  # generated so far
    biases: list[torch.Tensor] | None = None  # (1, V) each: `bias_sources` made dense at the first step
    first_token: float | None = None
    generate_start: float = 0.0
    done: bool = False

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.shape[1])

    @property
    def generated(self) -> torch.Tensor:
        return torch.tensor(self.tokens, dtype=torch.long)

    @property
    def sequence(self) -> torch.Tensor:
        """(1, T_prompt + generated) on the model's device: what a row's own processors read."""
        return torch.cat([self.prompt_ids, self.generated.to(self.prompt_ids.device).unsqueeze(0)], dim=1)


class Batcher:
    """The scheduler: queued turns wait in `waiting`; the worker thread runs `_drive` jobs that admit
    them at step boundaries and decode the batch, `STEPS_PER_JOB` steps per job."""

    def __init__(self, engine: Engine, max_rows: int):
        self.engine, self.model, self.max_rows = engine, engine.model, max_rows
        self.waiting: collections.deque[ChatJob] = collections.deque()
        self.lock = threading.Lock()
        self.scheduled = False
        self.rows: list[Row] = []
        self.lora = False  # whether the batch runs with the LoRA adapter on (one setting per backbone)
        # The memories whose hooks stay on while the batch decodes: a row that does not use one reads
        # nothing from it (the bank only fills its own row's prompt; a recurrent row state of zeros reads
        # as exactly zero), so turns with and without memory share one batch.
        self.reading = tuple(name for name in self.model.memories if name in BATCHED_MEMORIES)
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) 1 where the cache holds a row's token
        self.positions: torch.Tensor | None = None  # (B,) the position of each row's next token
        self.last: torch.Tensor | None = None  # (B,) each row's latest token: the next step's input
        self.states: dict[str, torch.Tensor] = {}  # (B, ...) stacked row states per row-state memory
        # (B, W) every row's tokens (prompt and generated), left-padded with HISTORY_PAD: what the
        # repetition penalty reads, for all rows in one gather/scatter instead of one call per row
        self.history: torch.Tensor | None = None
        self.eos = eos_ids(self.model.backbone.generation_config, engine.tokenizer)
        parameters = inspect.signature(self.model.backbone.forward).parameters
        self.keep_last = "logits_to_keep" in parameters
        # transformers 5 renames `past_key_values` to `cache` (as memlm.decode does)
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.peak_rows = 0

    def accepts(self, job: ChatJob) -> bool:
        return job_blocker(self.engine, job) is None

    def add(self, job: ChatJob) -> None:
        """Queue `job` (any thread); 503 when the engine's queue is full."""
        self.engine.reserve()
        with self.lock:
            self.waiting.append(job)
            if self.scheduled:
                return
            self.scheduled = True
        self.engine.submit(self._drive, force=True)

    # --- the worker's job --------------------------------------------------------------------
    @torch.no_grad()
    def _drive(self) -> None:
        """Admit what waits and decode some steps; queue another such job while there is work."""
        while True:
            try:
                for _ in range(STEPS_PER_JOB):
                    self._admit()
                    if not self.rows:
                        break
                    self._step()
            except BaseException as error:  # noqa: BLE001 - a failed step fails its rows, not the server
                logger.error("batched decoding failed", exc_info=error)
                for row in self.rows:
                    self._fail(row, error)
                self._clear()
            with self.lock:
                if not (self.rows or self.waiting):
                    self.scheduled = False
                    return
            try:
                self.engine.submit(self._drive, force=True)
                return
            except RuntimeError:  # the engine is closing: finish the work here
                continue

    def _admit(self) -> None:
        """Move waiting turns into the batch (first come first served): a turn that needs the LoRA adapter
        set the other way waits for the batch to drain and holds back those behind it; a turn with a
        row-state memory waits while its user has a row (their turns see each other's writes in order)."""
        taken: list[ChatJob] = []
        with self.lock:
            busy = {row.job.user for row in self.rows}
            lora = self.lora if self.rows else (LORA in self.waiting[0].memories if self.waiting else False)
            kept: collections.deque[ChatJob] = collections.deque()
            blocked = False
            while self.waiting:
                job = self.waiting.popleft()
                if job.cancelled.is_set() and not blocked:
                    taken.append(job)  # answered at once below (no row)
                elif blocked or (LORA in job.memories) != lora or len(self.rows) + len(taken) >= self.max_rows:
                    blocked = True
                    kept.append(job)
                elif job.user in busy and any(name in ROW_STATE_MEMORIES for name in job.memories):
                    kept.append(job)
                else:
                    busy.add(job.user)
                    taken.append(job)
            self.waiting = kept
        if not taken:
            return
        self.lora = lora
        rows = [row for row in (self._start(job) for job in taken) if row is not None]
        if not rows:
            return
        try:
            self._prefill(rows)
        except BaseException as error:
            for row in rows:
                self._fail(row, error)
            if any(row in self.rows for row in rows):
                raise  # they joined the batch: it is in an unknown state, `_drive` fails it whole

    def _start(self, job: ChatJob) -> Row | None:
        """A turn's start, as on the one-at-a-time path: its user's state, the bank's retrieval into its
        prompt, its logits processors; None if it ended already (cancelled, or failed)."""
        timings = {"queue_ms": (time.perf_counter() - job.submitted) * 1000}
        if job.cancelled.is_set():
            self.engine.release()
            job.emit(("error", ApiError(499, "client closed the request", "cancelled")))
            return None
        engine, model = self.engine, self.model
        try:
            start = time.perf_counter()
            states = self._load_states(job)
            model.set_provenance(user=job.user, session="chat")  # the bank retrieves this user's facts
            timings["state_load_ms"] = (time.perf_counter() - start) * 1000
            bank = model.memories["bank"] if "bank" in job.memories else None
            query = next((m["content"] for m in reversed(job.messages) if m["role"] == "user"), "").strip()
            embeddings = None
            if bank is not None and query and job.learn:
                from memlm.facts.extraction import extract_facts

                embeddings = TurnEmbeddings(bank.facts.embed,
                                            [query, *(fact.sentence for fact in extract_facts(query))])
            start, cpu = time.perf_counter(), time.thread_time()
            messages, used, touches = job.messages, [], []
            with engine._only(job.memories), _embedding_with(bank, embeddings), \
                    (bank.facts.turn() if bank is not None and job.learn else contextlib.nullcontext()):
                if bank is not None and query:
                    messages, used = bank.augment_messages(job.messages, query)
                if bank is not None and job.learn:
                    touches = bank.facts.take_touches()  # written when the row ends, with what it learns
                fusion = [p for memory in model.capable(PromptFusion) for p in memory.logits_processors()]
            timings["memory_search_ms"] = (time.perf_counter() - start) * 1000
            timings["memory_search_cpu_ms"] = (time.thread_time() - cpu) * 1000
            prompt_ids = engine._template(messages, add_generation_prompt=True)
            config = copy.deepcopy(model.backbone.generation_config)
            config.update(**job.generation)
            max_new = int(job.generation.get("max_new_tokens", 128))
            if prompt_ids.shape[1] + max_new > engine.context_length:
                from memlm.errors import ConfigError

                raise ConfigError(f"the prompt is {prompt_ids.shape[1]:,} tokens; with max_tokens={max_new} it "
                                  f"exceeds the model's context of {engine.context_length:,} tokens")
        except BaseException as error:  # noqa: BLE001 - this turn fails, the batch goes on
            self.engine.release()
            job.emit(("error", error))
            return None
        job.emit(("start", {"memories": [_used(hit) for hit in used], "prompt_tokens": int(prompt_ids.shape[1]),
                            "timings": dict(timings)}))
        trimmer = StopTrimmer(job.stop)
        middle, bias_sources, warpers = row_processors(config, job, fusion)
        row = Row(job=job, query=query, timings=timings, bank=bank, embeddings=embeddings, touches=touches,
                  used=used, prompt_ids=prompt_ids, max_new=max_new, penalty=float(config.repetition_penalty or 1.0),
                  middle=middle, bias_sources=bias_sources, warpers=warpers,
                  generator=row_generator(config, job, prompt_ids.device),
                  stop_criteria=StopStringCriteria(engine.tokenizer, job.stop) if job.stop else None,
                  trimmer=trimmer, streamer=None, states=states)  # type: ignore[arg-type]
        row.streamer = Streamer(engine.tokenizer, lambda text, row=row: self._on_text(row, text))
        row.streamer.put(prompt_ids.cpu())  # the prompt: skipped, as generate's first call
        row.generate_start = time.perf_counter()
        return row

    def _load_states(self, job: ChatJob) -> dict[str, torch.Tensor]:
        """The row of each row-state memory the batch reads: the user's (loaded, journal replayed, as
        unbatched) for those the turn uses, zeros (which read as nothing) for the others."""
        from memlm.paths import check_name

        check_name(job.user, "user id")
        names = [name for name in ROW_STATE_MEMORIES if name in self.reading]
        if any(name in job.memories for name in names):
            self.engine._ensure_user(job.user)
        states = {}
        for name in names:
            memory = self.model.memories[name]
            state = memory.state if name in job.memories and memory.state is not None else memory._zeros(1)
            states[name] = memory.expand_rows(state, 1).detach().clone()
        return states

    # --- decoding ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reading(self, states: dict[str, torch.Tensor]) -> Iterator[None]:
        """The batch's memories read: others' hooks removed, row-state memories hold the rows' stack (the
        loaded user's own state is put back after, for the one-at-a-time path)."""
        saved = {name: self.model.memories[name].state for name in states}
        with self.engine._only(self.reading + ((LORA,) if self.lora else ())):
            for name, stacked in states.items():
                self.model.memories[name].state = stacked
            try:
                yield
            finally:
                for name, state in saved.items():
                    self.model.memories[name].state = state

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                 states: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = {"logits_to_keep": 1} if self.keep_last else {}
        extra[self.cache_argument] = cache
        with self._reading(states):
            output = self.model.backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                         use_cache=True, **extra)
        return output.logits[:, -1, :].float()  # (B, V) as generate: scores in float32

    def _prefill(self, rows: list[Row]) -> None:
        """Run the new rows' prompts (left-padded together), choose their first tokens, join the batch."""
        device = rows[0].prompt_ids.device
        length = max(row.prompt_length for row in rows)
        pad = self.engine.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            input_ids[i, length - row.prompt_length:] = row.prompt_ids[0]
            mask[i, length - row.prompt_length:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        states = {name: torch.cat([row.states[name] for row in rows]) for name in rows[0].states}
        cache = DynamicCache(config=self.model.backbone.config)
        logits = self._forward(input_ids, mask, positions, cache, states)
        history = input_ids.masked_fill(mask == 0, HISTORY_PAD)
        self._join(rows, cache, mask, positions[:, -1] + 1, states, history)
        self._advance(rows, logits, range(len(self.rows) - len(rows), len(self.rows)))
        self._leave()

    def _join(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor,
              states: dict[str, torch.Tensor], history: torch.Tensor) -> None:
        """Append prefilled rows to the batch: the shorter cache is left-padded to the longer's length."""
        if self.cache is None or not self.rows:
            self.rows, self.cache, self.mask, self.positions, self.states = list(rows), cache, mask, positions, states
            self.last = positions.new_zeros(len(rows))
            self.history = history
        else:
            width = max(self.history.shape[1], history.shape[1])
            self.history = torch.cat([_pad_left(self.history, width, -1, HISTORY_PAD),
                                      _pad_left(history, width, -1, HISTORY_PAD)])
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_pad_left(old.keys, width, -2), _pad_left(new.keys, width, -2)])
                old.values = torch.cat([_pad_left(old.values, width, -2), _pad_left(new.values, width, -2)])
            self.mask = torch.cat([_pad_left(self.mask, width, -1), _pad_left(mask, width, -1)])
            self.positions = torch.cat([self.positions, positions])
            self.states = {name: torch.cat([self.states[name], states[name]]) for name in self.states}
            self.last = torch.cat([self.last, positions.new_zeros(len(rows))])
            self.rows.extend(rows)
        self.peak_rows = max(self.peak_rows, len(self.rows))

    def _step(self) -> None:
        """One decode step of every row, then rows that ended leave."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self._forward(self.last.unsqueeze(1), self.mask, self.positions.unsqueeze(1), self.cache,
                               self.states)
        self.positions = self.positions + 1
        self._advance(self.rows, logits, range(len(self.rows)))
        self._leave()

    def _scores(self, rows: list[Row], logits: torch.Tensor, slots: range) -> torch.Tensor:
        """Each row's logits processed in `generate`'s order, batched where the rows' processors allow:
        the repetition penalty (one gather/scatter, as transformers' processor does it), the rows' own
        processors, the fixed biases (one add per layer of them), then sampling's warpers."""
        vocab = logits.shape[-1]
        scores = logits
        penalties = torch.tensor([[row.penalty] for row in rows], dtype=scores.dtype, device=scores.device)
        if bool((penalties != 1.0).any()):
            ids = self.history[slots.start:slots.stop].clamp(max=vocab)  # padding -> the extra column
            padded = torch.nn.functional.pad(scores, (0, 1))
            score = torch.gather(padded, 1, ids)
            score = torch.where(score < 0, score * penalties, score / penalties)
            scores = padded.scatter(1, ids, score)[:, :vocab]
        scores = scores.clone() if scores is logits else scores
        for i, row in enumerate(rows):
            if row.middle:
                sequence = row.sequence
                for processor in row.middle:
                    scores[i:i + 1] = processor(sequence, scores[i:i + 1])
            if row.biases is None:
                row.biases = [dense_bias(source, vocab, scores) for source in row.bias_sources]
        layers = max(len(row.biases) for row in rows)
        zeros = scores.new_zeros(1, vocab)
        for layer in range(layers):  # adding zeros leaves a row exactly as it was
            scores = scores + torch.cat([row.biases[layer] if layer < len(row.biases) else zeros for row in rows])
        for i, row in enumerate(rows):
            if row.warpers:
                sequence = row.sequence
                for processor in row.warpers:
                    scores[i:i + 1] = processor(sequence, scores[i:i + 1])
        return scores

    def _advance(self, rows: list[Row], logits: torch.Tensor, slots: range) -> None:
        """Each row's processors and choice on its own logits; the tokens become the next step's input."""
        scores = self._scores(rows, logits, slots)
        tokens = scores.argmax(-1)
        for i, row in enumerate(rows):
            if row.generator is not None:
                probs = torch.softmax(scores[i:i + 1], dim=-1)
                tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0, 0]
        chosen = tokens.tolist()
        self.last[slots.start:slots.stop] = tokens
        column = self.history.new_full((self.history.shape[0], 1), HISTORY_PAD)  # rows not advanced: padding
        column[slots.start:slots.stop, 0] = tokens
        self.history = torch.cat([self.history, column], dim=1)
        for row, token in zip(rows, chosen, strict=True):
            row.tokens.append(token)
            count = len(row.tokens)
            stopped = row.stop_criteria is not None and bool(row.stop_criteria(row.sequence, None)[0])
            # decided before the token is streamed, as `generate` does (a cancel seen while streaming
            # token n stops the row after token n + 1 on both paths)
            row.done = token in self.eos or count >= row.max_new or stopped or row.job.cancelled.is_set()
            row.streamer.put(torch.tensor([token]))
        for row in rows:
            if row.done:
                self._finish(row)

    def _leave(self) -> None:
        """Drop ended rows from the batch, and cache columns no row uses any more (left padding)."""
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self._clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self.history = self.history[index]
        used = (self.history != HISTORY_PAD).any(0).nonzero()
        self.history = self.history[:, int(used[0]):] if len(used) else self.history
        self.states = {name: state[index.to(state.device)] for name, state in self.states.items()}
        first = int(self.mask.any(0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]

    def _clear(self) -> None:
        self.rows, self.cache, self.mask, self.positions, self.last, self.states = [], None, None, None, None, {}
        self.history = None

    # --- a row's end -------------------------------------------------------------------------
    def _on_text(self, row: Row, text: str) -> None:
        if row.first_token is None:
            row.first_token = time.perf_counter()
        piece = row.trimmer.feed(text)
        if piece:
            row.job.emit(("delta", piece))

    def _finish(self, row: Row) -> None:
        """The turn's end, as `Engine._chat`'s: learning, the journal, the answer, then the write pass."""
        engine, job, timings = self.engine, row.job, row.timings
        try:
            generated = row.generated
            timings["generate_ms"] = (time.perf_counter() - row.generate_start) * 1000
            timings["first_token_ms"] = ((row.first_token or time.perf_counter()) - row.generate_start) * 1000 \
                + timings["memory_search_ms"]
            row.streamer.end()
            tail = row.trimmer.flush()
            if tail:
                job.emit(("delta", tail))
            reply = engine.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            reply = cut_at_stop(reply, job.stop).strip()
            ended = bool(len(generated)) and int(generated[-1]) in self.eos
            finish = "stop" if ended or row.trimmer.stopped or hit_stop(engine.tokenizer.decode(generated), job.stop) \
                else ("length" if len(generated) >= row.max_new else "stop")
            learned: list[Any] = []
            pending: tuple[str, ...] = ()
            learning = job.learn and not job.cancelled.is_set() and bool(row.query)
            start, cpu = time.perf_counter(), time.thread_time()
            with self._turn_of(row):
                if learning and row.bank is not None:
                    learned = row.bank.observe_turn(row.query, reply)
                    row.bank.facts.flush_touches()
            timings["memory_write_ms"] = (time.perf_counter() - start) * 1000 if learning else 0.0
            timings["memory_write_cpu_ms"] = (time.thread_time() - cpu) * 1000 if learning else 0.0
            if learning and any(name not in ("bank", LORA) for name in job.memories):
                pending = job.memories
                start = time.perf_counter()
                engine._journal(job.user, row.query, reply, pending)
                timings["journal_ms"] = (time.perf_counter() - start) * 1000
            timings["total_ms"] = (time.perf_counter() - job.submitted) * 1000
            prompt = row.prompt_length
            job.emit(("end", {"reply": reply, "finish_reason": finish,
                              "usage": {"prompt_tokens": prompt, "completion_tokens": int(len(generated)),
                                        "total_tokens": prompt + int(len(generated))},
                              "learned": [_learned(result) for result in learned], "timings": timings}))
            if pending:
                engine._write_after_answer(job.user, row.query, reply, pending)
        except BaseException as error:  # noqa: BLE001 - every failure reaches the client as an event
            job.emit(("error", error))
        finally:
            row.done = True
            engine.release()

    @contextlib.contextmanager
    def _turn_of(self, row: Row) -> Iterator[None]:
        """The row's bank turn again: its user, its embeddings, and the touches its retrieval held back
        (written with what it learns, or when the turn ends)."""
        if row.bank is None or not row.job.learn:
            yield
            return
        self.model.set_provenance(user=row.job.user, session="chat")
        with self.engine._only(row.job.memories), _embedding_with(row.bank, row.embeddings), row.bank.facts.turn():
            row.bank.facts.give_touches(row.touches)
            row.touches = []
            yield

    def _fail(self, row: Row, error: BaseException) -> None:
        if row.done:
            return
        row.done = True
        try:
            with self._turn_of(row):
                pass
        finally:
            self.engine.release()
            row.job.emit(("error", error))


@contextlib.contextmanager
def _embedding_with(bank: Any, embeddings: Any) -> Iterator[None]:
    """While a row's turn works with the bank, it embeds from the batch made at its start."""
    if bank is None or embeddings is None:
        yield
        return
    original, bank.facts.embed = bank.facts.embed, embeddings
    try:
        yield
    finally:
        bank.facts.embed = original



def _pad_left(tensor: torch.Tensor, width: int, dim: int, value: int = 0) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)
