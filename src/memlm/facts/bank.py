"""`FactBank`: what the `bank` memory and `FactMemory` know about facts, with no model in the loop.

`learn(text)` decides whether a fact is worth keeping and stores it with provenance:

1. reject exact duplicates (same normalised text) and near-duplicates (cosine >= `duplicate_threshold`);
2. importance: the fact's loss improvement when a `measure` callable is given (the `bank` memory
   measures it with the language model) and `importance="loss"`, else 1.0; times the category's
   multiplier; below `min_importance` the fact is not stored;
3. store it in the `FactStore`, then evict the user's facts beyond `capacity`.

`retrieve(query)` ranks the user's facts by a blend of cosine similarity, importance (which decays
with the time since the fact was last used, `importance_half_life`) and recency.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from memlm.config import check_range
from memlm.errors import ConfigError
from memlm.facts.extraction import extract_facts
from memlm.facts.store import CONTROL_CHARACTERS, DuplicateFactError, Fact, FactStore, check_text
from memlm.paths import check_name

IMPORTANCE_MODES = ("loss", "constant")
FACT_EVICTION_POLICIES = ("importance", "oldest")
DAY = 86_400.0


@dataclass
class FactBankConfig:
    """How a fact bank learns, ranks and forgets.

    Args:
        user: whose facts are read and written unless a call names another user.
        top_k: facts retrieved per query (2: more facts confuse small models; see docs/bank.md).
        min_similarity: retrieved facts below this cosine similarity are not used.
        similarity_weight / importance_weight / recency_weight: the ranking blend.
        recency_half_life: seconds after which the recency term halves.
        importance: "loss" (measure the fact's loss improvement, when a model can) or "constant" (1.0).
        min_importance: facts scoring below are not stored ("not useful").
        category_weights: importance multiplier per category (default 1.0).
        duplicate_threshold: cosine at or above which a new fact counts as a near-duplicate.
        capacity: most facts kept per user (None: unbounded); `eviction` picks what goes.
        eviction: "importance" (lowest decayed importance first) or "oldest".
        importance_half_life: seconds of disuse after which importance halves (None: no decay).
    """

    user: str = "default"
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, value, allowed in (("importance", self.importance, IMPORTANCE_MODES),
                                     ("eviction", self.eviction, FACT_EVICTION_POLICIES)):
            if value not in allowed:
                raise ConfigError(f"bank: {name} must be one of {allowed}, got {value!r}")
        check_name(self.user, "user id")
        check_range("duplicate_threshold", self.duplicate_threshold, 0.0, 1.0, mechanism="bank")
        check_range("min_similarity", self.min_similarity, -1.0, 1.0, mechanism="bank")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"bank: top_k must be a positive integer, got {self.top_k!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ConfigError(f"bank: capacity must be a positive integer or None, got {self.capacity!r}")
        for name in ("recency_half_life", "importance_half_life"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"bank: {name} must be positive, got {value!r}")
        if any(weight < 0 for weight in self.category_weights.values()):
            raise ConfigError("bank: category_weights must be >= 0")


class LearnResult(NamedTuple):
    """What `learn()` did: `status` is "stored", "duplicate" or "not useful"."""

    status: str
    fact: Fact | None
    importance: float
    reason: str

    @property
    def stored(self) -> bool:
        return self.status == "stored"


class RetrievedFact(NamedTuple):
    fact: Fact
    score: float  # the blend used for ranking
    similarity: float
    importance: float  # decayed


class FactBank:
    """Learning, ranking and forgetting over a `FactStore`.

    `embed` turns texts into unit retrieval vectors; `measure` (optional) returns a fact's loss
    improvement and `latent` (optional) its backbone vector: both need the model, which `BankMemory`
    supplies; `FactMemory` runs without either.
    """

    def __init__(self, config: FactBankConfig, store: FactStore, embed: Callable[[list[str]], np.ndarray],
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
              actor: str = "learn", embed_text: str | None = None, embedding: np.ndarray | None = None,
              latent: np.ndarray | None = None) -> LearnResult:
        """Store `text` as a fact if it is new and useful; the result says what happened and why.

        `embed_text` is what retrieval matches against (default: `text`); chat facts use the user's
        own first-person sentence, since later questions come in the first person too. `embedding`
        and `latent` skip computing them when the caller has them already.

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
            if embedding is None:
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
            if latent is None and self.latent is not None:
                latent = self.latent([text])[0]
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

    # --- forgetting --------------------------------------------------------------------------
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
                 min_similarity: float | None = None, touch: bool = True) -> list[RetrievedFact]:
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
            ranked.append(RetrievedFact(fact, score, similarity, importance))
        ranked.sort(key=lambda r: (-r.score, r.fact.id))
        ranked = ranked[:k]
        if touch and ranked:
            self.store.touch([r.fact.id for r in ranked], user)
        return ranked
