"""`bank`: a continual-learning fact memory, kept per user, fused into generation as text or vectors.

`learn(text)` decides whether a fact is worth keeping and stores it with provenance:

1. reject exact duplicates (same normalised text) and near-duplicates (cosine >= `duplicate_threshold`);
2. measure how much the fact helps the model: the drop in the loss of the fact's own tokens when the
   fact is retrieved into the prompt (`importance="loss"`; `"constant"` skips the model call);
   importance = improvement x the category's multiplier; below `min_importance` it is not stored;
3. store it in a `FactStore` (SQLite + per-user FAISS index), then evict over `capacity`.

`retrieve(query)` ranks the user's facts by a blend of cosine similarity, importance (which decays
with the time since the fact was last used, `importance_half_life`) and recency. What is retrieved
reaches the model in two ways (`fusion`):

* `prompt` — facts are placed in the prompt through the chat template (`fuse_messages`); works
  untrained, and is what `ChatSession` and the evaluation harness use. While the model answers,
  the tokens of those facts get a small logit bonus (`fact_token_bias`, `FactTokenBias`): a small
  model tends to answer from its prior ("a glass of wine") even with the fact ("kefir") in front of
  it, and the bonus tips it toward copying;
* `latent` — every position of the last decoder layer's output attends over the latent vectors of
  the row's facts (the backbone's own position-weighted mean of the fact's hidden states) and adds
  the result through a per-channel gate that starts at zero: untrained it changes nothing, training
  opens it.

Writes through `MemoryModel` (`write()`, `memorize()`, the turn after `generate()`) store each
segment as a passage (`write_segments`), so streaming a long document into the bank makes its
passages retrievable. `ChatSession` turns that off and stores extracted facts instead.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from transformers import LogitsProcessor

from memlm.config import MemoryConfig, check_range
from memlm.errors import ConfigError, CorruptedFileError
from memlm.extraction import extract_facts
from memlm.hooks import BackboneLayout, add_capture_hook, add_output_hook
from memlm.memories.base import Memory, MemoryContext
from memlm.paths import check_name
from memlm.registry import register_memory, register_preset
from memlm.serialization import atomic_write_json, read_json
from memlm.store.facts import CONTROL_CHARACTERS, DuplicateFactError, Fact, FactStore, check_text

ENCODERS = ("minilm", "backbone")
FUSIONS = ("prompt", "latent", "both")
IMPORTANCE_MODES = ("loss", "constant")
EVICTION_POLICIES = ("importance", "oldest")
SNAPSHOT_FILE = "facts.sqlite"
LIVE_STORE_FILE = "store.json"
DAY = 86_400.0
MAX_SEGMENT_CHARS = 20_000


@dataclass
class BankConfig(MemoryConfig):
    """Config of the `bank` memory.

    Args:
        store: SQLite file shared by all users of this bank (None: in memory, saved with the state).
        user: whose facts are read and written until `set_provenance(user=...)` changes it.
        encoder: "minilm" (offline all-MiniLM-L6-v2 sentence vectors) or "backbone" (the backbone's
            position-weighted mean hidden state).
        fusion: "prompt", "latent" or "both" (see the module docstring).
        top_k: facts retrieved per query (2: more facts confuse small models; see docs/bank.md).
        min_similarity: retrieved facts below this cosine similarity are not used.
        similarity_weight / importance_weight / recency_weight: the ranking blend.
        recency_half_life: seconds after which the recency term halves.
        importance: "loss" (measure the fact's loss improvement) or "constant" (1.0, no model call).
        min_importance: facts scoring below are not stored ("not useful").
        category_weights: importance multiplier per category (default 1.0).
        duplicate_threshold: cosine at or above which a new fact counts as a near-duplicate.
        capacity: most facts kept per user (None: unbounded); `eviction` picks what goes.
        eviction: "importance" (lowest decayed importance first) or "oldest".
        importance_half_life: seconds of disuse after which importance halves (None: no decay).
        fact_token_bias: logit bonus, during the next `generate()`, for every token of the facts prompt
            fusion placed in the prompt (0: off; see `FactTokenBias`).
        write_segments: store segments written through `MemoryModel` as passages.
        latent_top_k: facts each position attends over in latent fusion.
    """

    store: str | None = None
    user: str = "default"
    encoder: str = "minilm"
    fusion: str = "both"
    top_k: int = 2
    min_similarity: float = 0.2
    similarity_weight: float = 1.0
    importance_weight: float = 0.1
    recency_weight: float = 0.0
    recency_half_life: float = 7 * DAY
    importance: str = "loss"
    min_importance: float = 0.0
    category_weights: dict[str, float] = field(default_factory=dict)
    duplicate_threshold: float = 0.99
    capacity: int | None = None
    eviction: str = "importance"
    importance_half_life: float | None = None
    fact_token_bias: float = 2.0
    write_segments: bool = True
    latent_top_k: int = 8

    def validate(self) -> None:
        super().validate()
        for name, value, allowed in (("encoder", self.encoder, ENCODERS), ("fusion", self.fusion, FUSIONS),
                                     ("importance", self.importance, IMPORTANCE_MODES),
                                     ("eviction", self.eviction, EVICTION_POLICIES)):
            if value not in allowed:
                raise ConfigError(f"bank: {name} must be one of {allowed}, got {value!r}")
        check_name(self.user, "user id")
        check_range("duplicate_threshold", self.duplicate_threshold, 0.0, 1.0, mechanism="bank")
        check_range("min_similarity", self.min_similarity, -1.0, 1.0, mechanism="bank")
        check_range("fact_token_bias", self.fact_token_bias, 0.0, 20.0, mechanism="bank")
        for name in ("top_k", "latent_top_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"bank: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ConfigError(f"bank: capacity must be a positive integer or None, got {self.capacity!r}")
        for name in ("recency_half_life", "importance_half_life"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"bank: {name} must be positive, got {value!r}")
        if any(weight < 0 for weight in self.category_weights.values()):
            raise ConfigError("bank: category_weights must be >= 0")

    @property
    def uses_prompt(self) -> bool:
        return self.fusion in ("prompt", "both")

    @property
    def uses_latent(self) -> bool:
        return self.fusion in ("latent", "both")


class LearnResult(NamedTuple):
    """What `learn()` did: `status` is "stored", "duplicate" or "not useful"."""

    status: str
    fact: Fact | None
    importance: float
    reason: str

    @property
    def stored(self) -> bool:
        return self.status == "stored"


class Retrieved(NamedTuple):
    fact: Fact
    score: float  # the blend used for ranking
    similarity: float
    importance: float  # decayed


class LatentReader(nn.Module):
    """Attention from hidden states to fact vectors, added through a zero-initialised gate."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gate = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, hidden_states: torch.Tensor, facts: torch.Tensor, top_k: int) -> torch.Tensor:
        # hidden_states (T, C) of one row, facts (N, C) visible to that row
        queries = self.query(hidden_states)  # (T, C)
        keys, values = self.key(facts), self.value(facts)  # (N, C)
        scores = queries @ keys.T / math.sqrt(hidden_states.shape[-1])  # (T, N)
        k = min(top_k, facts.shape[0])
        top_scores, top_index = scores.topk(k, dim=-1)  # (T, k)
        weights = top_scores.softmax(dim=-1).unsqueeze(-1)  # (T, k, 1)
        read = (weights * values[top_index]).sum(dim=1)  # (T, C)
        return hidden_states + self.gate * read


class FactTokenBias(LogitsProcessor):
    """Adds `bias` to the logits of a fixed set of tokens (the tokens of the retrieved facts).

    Measured on SmolLM2-135M-Instruct (multi-session recall, docs/bank.md): without it, recall falls
    from 88-91% to 74-77% (100 questions each on two sets of users); 4 on content tokens alone makes
    replies ramble.
    """

    def __init__(self, token_ids: list[int], bias: float):
        self.token_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token_ids = self.token_ids.to(scores.device)
        return scores.index_add(1, token_ids, scores.new_full((scores.shape[0], token_ids.numel()), self.bias))


class FactBank:
    """The model-free part of the bank: learning, ranking, forgetting, over a `FactStore`.

    `embed` turns texts into unit retrieval vectors; `measure` (optional) returns a fact's loss
    improvement and `latent` (optional) its backbone vector — both need the model, which
    `BankMemory` supplies; `memlm.Memory` runs without either.
    """

    def __init__(self, config: BankConfig, store: FactStore, embed: Callable[[list[str]], np.ndarray],
                 measure: Callable[[str], float] | None = None,
                 latent: Callable[[list[str]], np.ndarray] | None = None):
        self.config = config
        self.store = store
        self.embed = embed
        self.measure = measure
        self.latent = latent
        self.user = config.user
        self.session: str | None = None
        self._lock = threading.RLock()

    # --- learning ----------------------------------------------------------------------------
    def learn(self, text: str, category: str | None = None, user: str | None = None, *, source: str | None = None,
              session: str | None = None, importance: float | None = None, row: int | None = None,
              actor: str = "learn", embed_text: str | None = None) -> LearnResult:
        """Store `text` as a fact if it is new and useful; the result says what happened and why.

        `embed_text` is what retrieval matches against (default: `text`); chat facts use the user's
        own first-person sentence, since later questions come in the first person too.

        Example:
            >>> bank.learn("Einstein developed the theory of relativity.", category="science")
            LearnResult(status='stored', ...)
        """
        text = check_text(text)
        user = check_name(user or self.user, "user id")
        with self._lock:
            duplicate = self.store.find_duplicate(user, text, row)
            if duplicate is not None:
                return LearnResult("duplicate", duplicate, duplicate.importance,
                                   f"exact duplicate of fact {duplicate.id}")
            embedding = self.embed([embed_text or text])[0]
            if self.store.has_user(user):
                nearest = self.store.search(user, embedding, 1, row=row)
                if nearest and nearest[0][1] >= self.config.duplicate_threshold:
                    fact, similarity = nearest[0]
                    return LearnResult("duplicate", fact, fact.importance,
                                       f"near-duplicate of fact {fact.id} (cosine {similarity:.3f})")
            if importance is None:
                use_loss = self.config.importance == "loss" and self.measure is not None
                improvement = self.measure(text) if use_loss else 1.0
                importance = improvement * self.config.category_weights.get(category or "", 1.0)
            if importance < self.config.min_importance:
                return LearnResult("not useful", None, importance,
                                   f"importance {importance:.3f} is below min_importance {self.config.min_importance}")
            latent = self.latent([text])[0] if self.latent is not None else None
            try:
                fact = self.store.add(user, text, embedding, importance=importance, category=category,
                                      source=source, session=session or self.session, row=row, latent=latent,
                                      actor=actor)
            except DuplicateFactError:  # another process stored the same text a moment ago
                duplicate = self.store.find_duplicate(user, text, row)
                return LearnResult("duplicate", duplicate, importance, "exact duplicate (stored concurrently)")
            self.evict(user)
            return LearnResult("stored", fact, importance, f"importance {importance:.3f}")

    def remember_turn(self, user_text: str, reply: str | None = None, *, judge: Callable[[str], bool] | None = None,
                      user: str | None = None) -> list[LearnResult]:
        """Extract facts from a user message and learn them; the raw turn is kept as their source.

        Rules only (plus `judge` if given) and constant importance: no model call, so a turn is
        memorised in milliseconds.
        """
        # The source is provenance, not input to validate: a reply may hold any character.
        source = CONTROL_CHARACTERS.sub(" ", f"user: {user_text}" + (f"\nassistant: {reply}" if reply else ""))
        return [self.learn(fact.text, fact.category, user, source=source[:200_000], importance=1.0, actor="chat",
                           embed_text=fact.sentence)
                for fact in extract_facts(user_text, judge)]

    def evict(self, user: str) -> int:
        """Delete the user's facts beyond `capacity`, chosen by the eviction policy."""
        capacity = self.config.capacity
        if capacity is None:
            return 0
        excess = self.store.count(user) - capacity
        if excess <= 0:
            return 0
        facts = self.store.facts(user)
        if self.config.eviction == "oldest":
            victims = sorted(facts, key=lambda f: (f.created, f.id))[:excess]
        else:
            now = self.store.clock()
            victims = sorted(facts, key=lambda f: (self.decayed_importance(f, now), f.created, f.id))[:excess]
        return self.store.delete([f.id for f in victims], user, actor="eviction")

    def decayed_importance(self, fact: Fact, now: float | None = None) -> float:
        half_life = self.config.importance_half_life
        if half_life is None:
            return fact.importance
        age = max(0.0, (self.store.clock() if now is None else now) - fact.last_used)
        return fact.importance * 0.5 ** (age / half_life)

    # --- retrieving --------------------------------------------------------------------------
    def retrieve(self, query: str, k: int | None = None, user: str | None = None, *, row: int | None = None,
                 min_similarity: float | None = None, touch: bool = True) -> list[Retrieved]:
        """The user's best facts for `query`, ranked by the configured blend, with their scores."""
        query = check_text(query, "query")
        user = self.store.require_user(user or self.user)
        k = k or self.config.top_k
        floor = self.config.min_similarity if min_similarity is None else min_similarity
        candidates = self.store.search(user, self.embed([query])[0], max(4 * k, 32), row=row)
        now = self.store.clock()
        ranked = []
        for fact, similarity in candidates:
            if similarity < floor:
                continue
            importance = self.decayed_importance(fact, now)
            recency = 0.5 ** (max(0.0, now - fact.last_used) / self.config.recency_half_life)
            score = (self.config.similarity_weight * similarity + self.config.importance_weight * importance
                     + self.config.recency_weight * recency)
            ranked.append(Retrieved(fact, score, similarity, importance))
        ranked.sort(key=lambda r: (-r.score, r.fact.id))
        ranked = ranked[:k]
        if touch and ranked:
            self.store.touch([r.fact.id for r in ranked], user)
        return ranked

    def fuse_messages(self, messages: list[dict[str, str]], query: str | None = None, k: int | None = None
                      ) -> tuple[list[dict[str, str]], list[Retrieved]]:
        """Prompt fusion (`fuse_facts`) of the facts retrieved for `query` (default: the last user
        message). Returns the new messages and what was used."""
        if not self.config.uses_prompt or not self.store.has_user(self.user):
            return messages, []
        if query is None:
            query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        used = self.retrieve(query, k) if query.strip() else []
        if not used:
            return messages, []
        return fuse_facts(messages, [r.fact.text for r in used]), used

    # --- forgetting, measured ----------------------------------------------------------------
    def retention_curve(self, pairs: list[tuple[str, str]], spacing: float = 3600.0, k: int = 1,
                        bins: int = 10) -> list[dict[str, float]]:
        """Recall of facts by age under this config's capacity, eviction and decay.

        `pairs` are (fact, query) in the order learned, one every `spacing` simulated seconds, into
        a fresh in-memory bank with this config; afterwards each query is asked once. Returns one
        entry per age bin, newest first: {"age": mean age in seconds, "recall": share in the top k}.
        """
        clock = _SimulatedClock()
        store = FactStore(None, self.store.dimension, self.store.encoder, clock=clock)
        bank = FactBank(self.config.replace(store=None, user="retention"), store, self.embed)
        for fact, _ in pairs:
            clock.now += spacing
            bank.learn(fact, importance=1.0)
        found = []
        for position, (fact, query) in enumerate(pairs):
            hits = bank.retrieve(query, k, min_similarity=-1.0, touch=False) if store.has_user("retention") else []
            found.append((clock.now - (position + 1) * spacing, any(r.fact.text == fact for r in hits)))
        store.close()
        found.reverse()  # newest first
        size = max(1, math.ceil(len(found) / bins))
        return [{"age": float(np.mean([a for a, _ in found[i:i + size]])),
                 "recall": float(np.mean([hit for _, hit in found[i:i + size]]))}
                for i in range(0, len(found), size)]


class BankMemory(Memory):
    """Continual-learning fact bank: stores what helps, retrieves by similarity and importance."""

    config_class = BankConfig
    revision = 1  # 1: prompt fusion lists the facts with the most relevant last
    config: BankConfig

    def __init__(self, config: BankConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        self.backbone_layout = layout  # a plain dataclass: the backbone does not become a submodule
        self.hidden_size = layout.hidden_size
        self.reader = LatentReader(layout.hidden_size) if config.uses_latent else None
        self._encoder: Any = None
        self._write_segments = config.write_segments
        self._measuring = False
        self._captured: torch.Tensor | None = None
        self._latent_cache: tuple[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self._fact_tokens: list[int] = []  # tokens of the facts just put in the prompt (next generate only)
        store = FactStore(config.store, self.dimension, self.encoder_name)
        latent = self._latent_if_possible if config.uses_latent else None
        self.bank = FactBank(config, store, self.embed, measure=self.loss_improvement, latent=latent)

    # The bank's API, on the memory itself (`model.memories["bank"].learn(...)`).
    def learn(self, text: str, category: str | None = None, user: str | None = None, **kwargs: Any) -> LearnResult:
        return self.bank.learn(text, category, user, **kwargs)

    def retrieve(self, query: str, k: int | None = None, user: str | None = None, **kwargs: Any) -> list[Retrieved]:
        return self.bank.retrieve(query, k, user, **kwargs)

    def fuse_messages(self, messages: list[dict[str, str]], query: str | None = None, k: int | None = None
                      ) -> tuple[list[dict[str, str]], list[Retrieved]]:
        return self.bank.fuse_messages(messages, query, k)

    def remember_turn(self, user_text: str, reply: str | None = None, **kwargs: Any) -> list[LearnResult]:
        return self.bank.remember_turn(user_text, reply, **kwargs)

    # How chats and the evaluation harness reach the bank (see `Memory`).
    def augment_messages(self, messages: list[dict[str, str]], query: str) -> tuple[list[dict[str, str]], list[Any]]:
        messages, used = self.bank.fuse_messages(messages, query=query)
        self._fact_tokens = []
        if used and self.config.fact_token_bias > 0 and self.context.tokenizer is not None:
            self._fact_tokens = fact_token_ids(self.context.tokenizer, [r.fact.text for r in used])
        return messages, used

    def logits_processors(self) -> list[Any]:
        tokens, self._fact_tokens = self._fact_tokens, []
        return [FactTokenBias(tokens, self.config.fact_token_bias)] if tokens else []

    def observe_turn(self, user_text: str, reply: str | None, judge: Callable[[str], bool] | None = None
                     ) -> list[LearnResult]:
        return self.bank.remember_turn(user_text, reply, judge=judge)

    def learn_text(self, text: str) -> list[LearnResult]:
        return [self.bank.learn(text, source=text)]

    @property
    def learns_from_text(self) -> bool:
        return True

    @property
    def store(self) -> FactStore:
        return self.bank.store

    @property
    def user(self) -> str:
        return self.bank.user

    # --- encoders ----------------------------------------------------------------------------
    @property
    def encoder_name(self) -> str:
        if self.config.encoder == "minilm":
            return "minilm:all-MiniLM-L6-v2"
        return f"backbone:{self.backbone_layout.model_type}:{self.hidden_size}"

    @property
    def dimension(self) -> int:
        from memlm.embeddings import MINILM_DIMENSION

        return MINILM_DIMENSION if self.config.encoder == "minilm" else self.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        """Retrieval vectors (N, dimension), unit norm."""
        if self.config.encoder == "minilm":
            if self._encoder is None:
                from memlm.embeddings import sentence_encoder

                self._encoder = sentence_encoder(device=str(self.backbone_layout.device))  # beside the backbone
            return self._encoder.encode(texts)
        latents = self.latent_vectors(texts)
        return latents / np.linalg.norm(latents, axis=1, keepdims=True).clip(min=1e-6)

    def _tokenizer(self) -> Any:
        if self.context.tokenizer is None:
            raise ConfigError("bank: this needs a tokenizer: attach(model, 'bank', tokenizer=tokenizer)")
        return self.context.tokenizer

    def _latent_if_possible(self, texts: list[str]) -> np.ndarray | None:
        return self.latent_vectors(texts) if self.context.tokenizer is not None else None

    @torch.no_grad()
    def latent_vectors(self, texts: list[str]) -> np.ndarray:
        """The backbone's position-weighted mean of final hidden states for each text (N, C)."""
        tokenizer, model = self._tokenizer(), self.backbone_layout.model
        vectors = []
        with self._own_pass():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt").input_ids[:, -1024:].to(self.backbone_layout.device)
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]  # (T, C)
                vectors.append(position_weighted_mean(hidden).float().cpu().numpy())
        return np.stack(vectors)

    @torch.no_grad()
    def loss_improvement(self, text: str) -> float:
        """Relative drop of the mean loss of `text`'s tokens when the fact is in the prompt.

        The same layout as prompt fusion; 0 when the fact does not help (e.g. the model already
        predicts the text), towards 1 when it makes the text certain.
        """
        tokenizer, model = self._tokenizer(), self.backbone_layout.model
        target = tokenizer(" " + text, add_special_tokens=False, return_tensors="pt").input_ids[:, :512]
        losses = []
        with self._own_pass():
            for prefix in ("Facts:\n\n", facts_block([text]) + "\n\n"):
                prefix_ids = tokenizer(prefix, return_tensors="pt").input_ids
                ids = torch.cat([prefix_ids, target], dim=1).to(self.backbone_layout.device)
                logits = model(input_ids=ids).logits[0, prefix_ids.shape[1] - 1:-1].float()  # (T_target, V)
                losses.append(nn.functional.cross_entropy(logits, ids[0, prefix_ids.shape[1]:]).item())
        without, with_fact = losses
        return max(0.0, (without - with_fact) / max(without, 1e-6))

    @contextlib.contextmanager
    def _own_pass(self) -> Iterator[None]:
        """A forward pass the bank runs for itself: no latent read, no capture."""
        previous, self._measuring = self._measuring, True
        try:
            yield
        finally:
            self._measuring = previous

    @contextlib.contextmanager
    def segment_writes(self, enabled: bool) -> Iterator[None]:
        """Temporarily turn storing written segments on or off."""
        previous, self._write_segments = self._write_segments, enabled
        try:
            yield
        finally:
            self._write_segments = previous

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        if self.reader is not None:
            self.track(add_output_hook(layout.layers[-1], self._read_latent))
        self.track(add_capture_hook(layout.final_norm or layout.layers[-1], self._capture))

    def _capture(self, hidden_states: torch.Tensor) -> None:
        if self.context.capturing and self._write_segments and not self._measuring:
            self._captured = hidden_states.detach()

    def _latents(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(row of each fact, -1 = every row; latent vectors) on `device`, rebuilt only when the
        user's facts change: this runs on every forward, decode steps included."""
        user = self.bank.user
        key = (user, self.store.version(user), device, dtype)
        if self._latent_cache is None or self._latent_cache[0] != key:
            _, rows, vectors = self.store.latents(user)
            if not rows:
                self._latent_cache = (key, None)
            else:
                row_ids = torch.tensor([-1 if r is None else r for r in rows], device=device)
                latents = torch.from_numpy(np.stack(vectors)).to(device=device, dtype=dtype)
                self._latent_cache = (key, (row_ids, latents))
        return self._latent_cache[1]

    def _read_latent(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self._measuring or self.reader is None:
            return hidden_states
        latents = self._latents(hidden_states.device, hidden_states.dtype)
        if latents is None:
            return hidden_states
        rows_tensor, vectors = latents
        outputs = []
        for row_index in range(hidden_states.shape[0]):  # each batch row reads only its own facts
            visible = (rows_tensor == -1) | (rows_tensor == row_index)
            if not bool(visible.any()):
                outputs.append(hidden_states[row_index])
                continue
            outputs.append(self.reader(hidden_states[row_index], vectors[visible], self.config.latent_top_k))
        return torch.stack(outputs)

    # --- writing (segments through MemoryModel) ----------------------------------------------
    def write(self) -> None:
        if self._captured is None:
            return
        hidden_states, self._captured = self._captured, None
        mask, input_ids, tokenizer = self.context.attention_mask, self.context.input_ids, self.context.tokenizer
        user = self.bank.user
        for row in range(hidden_states.shape[0]):
            valid = mask[row].bool() if mask is not None else torch.ones(hidden_states.shape[1], dtype=torch.bool)
            if not bool(valid.any()):
                continue
            latent = position_weighted_mean(hidden_states[row][valid.to(hidden_states.device)]).float().cpu().numpy()
            ids = input_ids[row][valid.to(input_ids.device)].tolist() if input_ids is not None else []
            text = tokenizer.decode(ids, skip_special_tokens=True).strip() if tokenizer is not None and ids else ""
            if not text:  # no tokenizer: the token ids are the most faithful text there is
                text = "tokens: " + " ".join(map(str, ids)) if ids else f"segment of {int(valid.sum())} tokens"
            text = CONTROL_CHARACTERS.sub(" ", text[:MAX_SEGMENT_CHARS]).strip() or "(blank segment)"
            if self.store.find_duplicate(user, text, row) is not None:
                continue
            if self.config.encoder == "minilm":
                embedding = self.embed([text])[0]
            else:  # the captured states are the backbone encoder's view already: no extra pass
                embedding = latent / max(float(np.linalg.norm(latent)), 1e-6)
            with contextlib.suppress(DuplicateFactError):  # identical segment stored concurrently
                self.store.add(user, text, embedding, importance=1.0, category="segment", session=self.bank.session,
                               row=row, latent=latent if self.reader is not None else None, actor="write")
        self.bank.evict(user)

    def clear_captures(self) -> None:
        self._captured = None

    # --- state -------------------------------------------------------------------------------
    def reset(self, batch_size: int | None = None) -> None:
        """Forget every fact of the current user."""
        self._fact_tokens = []
        if self.store.has_user(self.bank.user):
            self.store.delete_all(self.bank.user, actor="reset")

    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        if user is not None:
            self.bank.user = check_name(user, "user id")
        if session is not None:
            self.bank.session = session

    def state_tensors(self) -> dict[str, torch.Tensor]:
        # The facts live in SQLite (state files); this records their extent so a state file and the
        # database it belongs with can be told apart, and makes a restored bank comparable.
        user = self.bank.user
        return {"extent": torch.tensor([self.store.count(user), self.store.version(user)], dtype=torch.int64)}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().check_state_tensors(tensors)
        if tuple(tensors["extent"].shape) != (2,):
            raise CorruptedFileError(f"bank: saved extent has shape {tuple(tensors['extent'].shape)}, expected (2,)")

    def save_state_files(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.config.store is not None:
            # A bank on a database file is its own persistence (written at every change, shared by
            # processes): the state only records where it lives, so loading never rolls it back.
            atomic_write_json(directory / LIVE_STORE_FILE, {"store": str(Path(self.config.store).resolve()),
                                                            "encoder": self.encoder_name})
            return
        staging = directory / (SNAPSHOT_FILE + ".tmp")
        staging.unlink(missing_ok=True)
        self.store.copy_to(staging)
        staging.replace(directory / SNAPSHOT_FILE)

    def read_state_files(self, directory: Path) -> Any:
        if self.config.store is not None:
            saved = read_json(directory / LIVE_STORE_FILE)
            if not isinstance(saved, dict) or "store" not in saved:
                raise CorruptedFileError(f"{directory / LIVE_STORE_FILE} is not a bank store reference")
            return None
        path = directory / SNAPSHOT_FILE
        if not path.exists():
            raise CorruptedFileError(f"bank state {path} is missing")
        snapshot = FactStore(path, self.dimension, self.encoder_name)  # checks the file and the encoder
        check = snapshot.connection.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            snapshot.close()
            raise CorruptedFileError(f"bank state {path} is damaged ({check})")
        return snapshot

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        if files is None:
            return
        try:
            self.store.replace_with(files)
        finally:
            files.close()
        self._latent_cache = None

    def summary(self) -> dict[str, Any]:
        user = self.bank.user
        return {
            "user": user,
            "facts": self.store.count(user),
            "users": len(self.store.users()),
            "encoder": self.encoder_name,
            "fusion": self.config.fusion,
            "store": self.config.store or "in memory",
        }

    def retention_curve(self, pairs: list[tuple[str, str]], **kwargs: Any) -> list[dict[str, float]]:
        return self.bank.retention_curve(pairs, **kwargs)


class _SimulatedClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def position_weighted_mean(hidden_states: torch.Tensor) -> torch.Tensor:
    """Mean over positions weighted 1..T: later tokens have read the whole fact, so they count more."""
    weights = torch.arange(1, hidden_states.shape[0] + 1, device=hidden_states.device, dtype=hidden_states.dtype)
    return (weights.unsqueeze(-1) * hidden_states).sum(0) / weights.sum()  # (C,)


def fact_token_ids(tokenizer: Any, facts: list[str]) -> list[int]:
    """The token ids `FactTokenBias` favours: each fact's tokens with and without a leading space,
    since either form may start a word in the reply."""
    return [token for fact in facts for text in (fact, " " + fact)
            for token in tokenizer(text, add_special_tokens=False).input_ids]


def facts_block(facts: list[str]) -> str:
    """How retrieved facts are listed for the model, in the order given."""
    listed = "\n".join(f"- {fact}" for fact in facts)
    return (f"You remember facts about the user from earlier conversations:\n{listed}\n"
            f"Answer questions about the user from these facts, briefly.")


def fuse_facts(messages: list[dict[str, str]], facts: list[str]) -> list[dict[str, str]]:
    """Prompt fusion of `facts`, most relevant first: they go into the system message, and a short
    recap exchange (the user asks what the assistant remembers, the assistant lists the facts) goes
    just before the last user message.

    Two measured choices (SmolLM2-135M-Instruct, multi-session recall, docs/bank.md):
    - the recap lifts recall from about 55% (facts in the system message alone) to about 85%: a
      small model repeats what it has just said far more reliably than it reads a system message;
    - the facts are listed in reverse, so the most relevant one comes last, next to the question: the
      model tends to say the fact it read last, and with the best one first, 6 of 7 wrong answers
      repeated the other fact (86.3% -> 90.7% over 300 questions; 93% on the default 100). The cost:
      when the model recites both facts, the other one now comes first, so a reply cut at 16 tokens
      can miss the answer (`benchmarks/fusion_order.py`).
    """
    if not facts:
        return messages
    nearest_last = list(reversed(facts))
    block = facts_block(nearest_last)
    if messages and messages[0]["role"] == "system":
        system, rest = {"role": "system", "content": messages[0]["content"] + "\n\n" + block}, messages[1:]
    else:
        system, rest = {"role": "system", "content": block}, list(messages)
    recap = [{"role": "user", "content": "Is there anything you remember about me?"},
             {"role": "assistant", "content": "Yes: " + " ".join(nearest_last)}]
    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=len(rest))
    return [system, *rest[:last_user], *recap, *rest[last_user:]]


register_memory("bank", BankConfig, BankMemory)
register_preset("bank-latent", {"mechanism": "bank", "fusion": "latent"},
                "bank fused only through the gated latent reader (needs training)")
register_preset("bank-backbone", {"mechanism": "bank", "encoder": "backbone"},
                "bank retrieving with the backbone's own hidden states instead of MiniLM")
