"""`FactBank`: what the `bank` memory and `FactMemory` know about facts, with no model in the loop.

`learn(text)` decides whether a fact is worth keeping and stores it with provenance:

1. reject exact duplicates (same normalised text) and near-duplicates (cosine >= `duplicate_threshold`);
   a fact that fills the same slot as an active fact with another value ("I moved to Oslo" after "I
   live in Lisbon") is an update instead: it is stored and *supersedes* the old one, which stays in
   the history, marked superseded, and is no longer retrieved (`memlm.facts.slots` has the rules);
2. importance: the fact's loss improvement when a `measure` callable is given (the `bank` memory
   measures it with the language model) and `importance="loss"`, else 1.0; times the category's
   multiplier; below `min_importance` the fact is not stored;
3. store it in the `FactStore`, then evict the user's facts beyond `capacity`.

`retrieve(query)` is hybrid search: the user's facts nearest to the query's vector and those with the
best BM25 score for its words are fused (`retrieval`, `memlm.facts.ranking`), plus `slot_bonus` for
facts that fill the slot the question asks about ("Where do I live?" / "I moved to Oslo"), then
ranked by a blend of that relevance, importance (which decays with the time since the fact was last used,
`importance_half_life`) and recency. Superseded, expired and deleted facts are never returned.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from memlm.config import check_range
from memlm.errors import ConfigError
from memlm.facts.extraction import extract_facts
from memlm.facts.ranking import check_fusion, fuse_rankings
from memlm.facts.slots import Slot, conflict, find_slot, question_slot, same_attribute
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
        retrieval: how the dense and the lexical (BM25) rankings are fused: "hybrid:W" (cosine + W x
            the query-normalised BM25), "rrf", "dense" or "lexical" (measured: docs/bank.md).
        supersede: a new fact filling the same slot as an active one replaces it (see `memlm.facts.slots`).
        supersede_similarity: the cosine two facts of one slot need for the newer to replace the older,
            unless it says it is a change ("new", "moved", "now", ...).
        ttl: seconds a new fact stays retrievable (None: forever); `learn(expires_at=...)` sets one fact's.
        slot_bonus: added to the relevance of the user's facts that fill the slot a question asks
            about ("Where do I live?" and "I moved to Oslo": slot "home"; `memlm.facts.slots`).
        turn_lexical_weight: the W of `hybrid:W` for memories stored as conversation turns (those
            with a `context`: the message they follow, who spoke). A turn's words say more than its
            vector: chit-chat turns all sound alike to MiniLM (docs/bank.md, "Real conversations").
        run_weight: each candidate also gets this share of the best relevance among the candidates
            of its run (`run_id`): what answers a question is where the talk was about it.
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
    retrieval: str = "hybrid:0.1"
    supersede: bool = True
    supersede_similarity: float = 0.4
    ttl: float | None = None
    slot_bonus: float = 0.2
    turn_lexical_weight: float = 1.0
    run_weight: float = 0.6

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
        check_fusion(self.retrieval)
        check_range("supersede_similarity", self.supersede_similarity, -1.0, 1.0, mechanism="bank")
        check_range("slot_bonus", self.slot_bonus, 0.0, 10.0, mechanism="bank")
        check_range("turn_lexical_weight", self.turn_lexical_weight, 0.0, 10.0, mechanism="bank")
        check_range("run_weight", self.run_weight, 0.0, 10.0, mechanism="bank")
        for name in ("recency_half_life", "importance_half_life", "ttl"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"bank: {name} must be positive, got {value!r}")
        if any(weight < 0 for weight in self.category_weights.values()):
            raise ConfigError("bank: category_weights must be >= 0")


class LearnResult(NamedTuple):
    """What `learn()` did: `status` is "stored", "duplicate" or "not useful"; `superseded` lists the
    facts the stored one replaced (the reason says why)."""

    status: str
    fact: Fact | None
    importance: float
    reason: str
    superseded: tuple[Fact, ...] = ()

    @property
    def stored(self) -> bool:
        return self.status == "stored"


class RetrievedFact(NamedTuple):
    fact: Fact
    score: float  # the blend used for ranking
    similarity: float  # cosine of the retrieval vectors
    importance: float  # decayed
    relevance: float = 0.0  # the fused dense + lexical score (the blend's first term)
    lexical: float = 0.0  # BM25 score (0: no word in common)


class FactBank:
    """Learning, ranking and forgetting over a `FactStore`.

    `embed` turns texts into unit retrieval vectors; `measure` (optional) returns a fact's loss
    improvement and `latent` (optional) its backbone vector: both need the model, which `BankMemory`
    supplies; `FactMemory` runs without either.
    """

    def __init__(self, config: FactBankConfig, store: FactStore, embed: Callable[[list[str]], np.ndarray],
                 measure: Callable[[str], float] | None = None,
                 latent: Callable[[list[str]], np.ndarray | None] | None = None):
        self.config = config
        self.store = store
        self.embed = embed
        self.measure = measure
        self.latent = latent
        self.user = config.user
        self.session: str | None = None
        self._lock = threading.RLock()
        self._turns = threading.local()  # per thread, inside `turn()`: the touches waiting for its transaction

    # --- learning ----------------------------------------------------------------------------
    def learn(self, text: str, category: str | None = None, user: str | None = None, *, source: str | None = None,
              session: str | None = None, importance: float | None = None, row: int | None = None,
              actor: str = "learn", embed_text: str | None = None, embedding: np.ndarray | None = None,
              latent: np.ndarray | None = None, spoken: str | None = None, expires_at: float | None = None,
              metadata: dict | None = None, agent_id: str | None = None, run_id: str | None = None,
              context: str | None = None) -> LearnResult:
        """Store `text` as a fact if it is new and useful; the result says what happened and why.

        `embed_text` is what retrieval matches against (default: `text`); chat facts use the user's
        own first-person sentence, since later questions come in the first person too, and keep it as
        `spoken`. `embedding` and `latent` skip computing them when the caller has them already.
        `expires_at` (unix time) ends the fact's retrieval (default: now + `ttl`, if set).

        Example:
            >>> bank.learn("Einstein developed the theory of relativity.", category="science")
            LearnResult(status='stored', ...)
        """
        text = check_text(text)
        user = check_name(user or self.user, "user id")
        with self._lock:
            return self._learn(text, category, user, source=source, session=session, importance=importance, row=row,
                               actor=actor, embed_text=embed_text, embedding=embedding, latent=latent, spoken=spoken,
                               expires_at=expires_at, metadata=metadata, agent_id=agent_id, run_id=run_id,
                               context=context)

    def _learn(self, text: str, category: str | None, user: str, *, source: str | None, session: str | None,
               importance: float | None, row: int | None, actor: str, embed_text: str | None,
               embedding: np.ndarray | None, latent: np.ndarray | None, spoken: str | None,
               expires_at: float | None, metadata: dict | None, agent_id: str | None, run_id: str | None,
               context: str | None, turn: _TurnFacts | None = None) -> LearnResult:
        """`learn`, under the lock; within `turn` (`remember_turn`), the near-duplicate check reads the
        candidates the turn found in one pass, plus the turn's own facts stored so far."""
        duplicate = self.store.find_duplicate(user, text, row)
        if duplicate is not None:
            return LearnResult("duplicate", duplicate, duplicate.importance,
                               f"exact duplicate of fact {duplicate.id}")
        if embedding is None:
            embedding = self.embed([embed_text or spoken or text])[0]
        slot = find_slot(spoken or text)
        replaced, why = ([], "") if slot is None or not self.config.supersede else \
            self._superseded_by(user, slot, embedding, row)
        best = self._nearest(user, embedding, replaced, row) if turn is None else \
            turn.nearest(self.store, user, embedding, replaced, row)
        if best is not None and best[1] >= self.config.duplicate_threshold:
            fact, similarity = best
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
            vectors = self.latent([text])  # None where they cannot be computed (a model bank without a tokenizer)
            latent = None if vectors is None else vectors[0]
        if expires_at is None and self.config.ttl is not None:
            expires_at = self.store.clock() + self.config.ttl
        try:
            fact = self.store.add(user, text, embedding, importance=importance, category=category,
                                  source=source, session=session or self.session, row=row, latent=latent,
                                  actor=actor, spoken=spoken, expires_at=expires_at, metadata=metadata,
                                  agent_id=agent_id, run_id=run_id, supersedes=[f.id for f in replaced],
                                  reason=why or None, slot=slot_key(slot), context=context)
        except DuplicateFactError:  # another process stored the same text a moment ago
            duplicate = self.store.find_duplicate(user, text, row)
            return LearnResult("duplicate", duplicate, importance, "exact duplicate (stored concurrently)")
        if turn is not None:
            turn.stored.append((fact, np.asarray(embedding, dtype=np.float32)))
            turn.gone.update(f.id for f in replaced)
        self.evict(user)
        reason = f"importance {importance:.3f}" + (f"; supersedes {_ids(replaced)}: {why}" if replaced else "")
        return LearnResult("stored", fact, importance, reason, tuple(replaced))

    def _nearest(self, user: str, embedding: np.ndarray, replaced: list[Fact], row: int | None
                 ) -> tuple[Fact, float] | None:
        """The user's live fact most similar to `embedding` (visible to `row`), the facts it replaces
        left out; None if there is none."""
        if not self.store.has_user(user):
            return None
        nearest = self.store.search(user, embedding, 1 + len(replaced), row=row)
        nearest = [(fact, cosine) for fact, cosine in nearest if fact.id not in {f.id for f in replaced}]
        return nearest[0] if nearest else None

    def _superseded_by(self, user: str, slot: Slot, embedding: np.ndarray, row: int | None
                       ) -> tuple[list[Fact], str]:
        """The user's active facts that a new fact filling `slot` replaces, and why."""
        candidates = self.store.slot_facts(user, slot_key(slot), row)
        if not candidates:
            return [], ""
        cosines = self.store.embeddings(user, [f.id for f in candidates]) @ np.asarray(embedding, dtype=np.float32)
        replaced, reasons = [], []
        for fact, cosine in zip(candidates, cosines.tolist(), strict=True):
            old = find_slot(fact.spoken or fact.text)
            why = conflict(slot, old) if old is not None else None
            if why is None:
                continue
            if slot.change:
                why += "; the new statement says it is a change"
            elif cosine < self.config.supersede_similarity:
                continue
            replaced.append(fact)
            reasons.append(f"{why} (cosine {cosine:.2f})")
        return replaced, "; ".join(reasons)

    def remember_turn(self, user_text: str, reply: str | None = None, *, judge: Callable[[str], bool] | None = None,
                      user: str | None = None, keep_statements: bool = False, **kwargs: Any) -> list[LearnResult]:
        """Extract facts from a user message and learn them; the raw turn is kept as their source.

        Rules only (plus `judge` if given) and constant importance: no model call, so a turn is
        memorised in milliseconds. `keep_statements` also keeps statements that are not about the
        speaker (`extract_facts`), for memories that belong to an agent or a run.
        """
        # The source is provenance, not input to validate: a reply may hold any character.
        source = CONTROL_CHARACTERS.sub(" ", f"user: {user_text}" + (f"\nassistant: {reply}" if reply else ""))
        facts = extract_facts(user_text, judge, keep_statements)
        store = self.store
        one_pass = (facts and self.config.capacity is None and not {"embedding", "embed_text"} & set(kwargs)
                    and hasattr(store, "near") and hasattr(store, "batch"))
        if not one_pass:
            self._flush_touches()
            return [self.learn(fact.text, fact.category, user, source=source[:200_000], importance=1.0, actor="chat",
                               spoken=fact.sentence, **kwargs) for fact in facts]
        # The whole turn at once, with the same decisions as one `learn` after another: one encoder call
        # for its sentences, one pass over the user's vectors for their near-duplicate candidates, and
        # one transaction (one fsync) for what it stores and the touches of the turn's retrieval.
        user = check_name(user or self.user, "user id")
        texts = [check_text(fact.text) for fact in facts]
        vectors = np.asarray(self.embed([fact.sentence or text for fact, text in zip(facts, texts, strict=True)]),
                             dtype=np.float32)
        fields = {"source": source[:200_000], "session": None, "importance": 1.0, "row": None, "actor": "chat",
                  "embed_text": None, "latent": None, "expires_at": None, "metadata": None, "agent_id": None,
                  "run_id": None, "context": None, **kwargs}
        with self._lock, store.batch():
            self._flush_touches()
            candidates = store.near(user, vectors, self.config.duplicate_threshold)
            if candidates is None:  # a shared index: one search per fact
                candidates = [None] * len(facts)
            turn = _TurnFacts(self.config.duplicate_threshold, store.clock())
            results = []
            for fact, text, vector, found in zip(facts, texts, vectors, candidates, strict=True):
                turn.candidates = found
                results.append(self._learn(text, fact.category, user, spoken=fact.sentence, embedding=vector,
                                           turn=turn, **fields))
        return results

    # --- a chat turn -------------------------------------------------------------------------
    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """A chat turn (the server's): the facts its retrievals use are marked used (`touch`) in the
        transaction of the facts it learns (`remember_turn`), one fsync for the turn; with the time
        they were retrieved. Whatever is still waiting when the turn ends (it learned nothing, or
        failed) is written then (`flush_touches`). A crash before that loses the turn as a whole:
        it was not answered."""
        outer = getattr(self._turns, "touches", None)
        if outer is None:
            self._turns.touches = []
        try:
            yield
        finally:
            if outer is None:
                try:
                    self._flush_touches()
                finally:
                    self._turns.touches = None

    def flush_touches(self) -> None:
        """Write the touches the current `turn()` holds back (one transaction)."""
        self._flush_touches()

    def take_touches(self) -> list[Any]:
        """The touches the current `turn()` holds back, handed to the caller (none are left to write):
        a batched server turn keeps its own between its retrieval and its end, while other turns run."""
        pending = list(getattr(self._turns, "touches", None) or [])
        if getattr(self._turns, "touches", None) is not None:
            self._turns.touches = []
        return pending

    def give_touches(self, touches: list[Any]) -> None:
        """Hand touches taken with `take_touches` back to the current `turn()`, which writes them."""
        if getattr(self._turns, "touches", None) is None:
            raise RuntimeError("give_touches needs a turn() under way")
        self._turns.touches.extend(touches)

    def _flush_touches(self) -> None:
        pending = getattr(self._turns, "touches", None)
        if not pending:
            return
        self._turns.touches = []
        batch = getattr(self.store, "batch", contextlib.nullcontext)
        with self._lock, batch():
            for user, ids, now in pending:
                if isinstance(self.store, FactStore):
                    self.store.touch(ids, user, now=now)
                else:
                    self.store.touch(ids, user)

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
    def _conversation_fusion(self, fused: list[tuple[int, float]], facts: dict[int, Fact], bm25: dict[int, float],
                             method: str) -> list[tuple[int, float]]:
        """Conversation turns weigh their words more (`turn_lexical_weight`), and every candidate
        gets `run_weight` x the best relevance of its run's candidates. Measured on LoCoMo, weights
        chosen on half its conversations: docs/bank.md, "Real conversations"."""
        weight = _hybrid_weight(method)
        if weight is None:  # one side alone (dense, lexical, rrf) stays as it is: a baseline to compare with
            return fused
        best = max(bm25.values(), default=0.0)
        if best > 0 and self.config.turn_lexical_weight != weight:
            extra = self.config.turn_lexical_weight - weight
            fused = [(fact_id, relevance + (extra * bm25.get(fact_id, 0.0) / best if facts[fact_id].context else 0.0))
                     for fact_id, relevance in fused]
        if self.config.run_weight and any(facts[fact_id].run_id for fact_id, _ in fused):
            best_of_run: dict[str, float] = {}
            for fact_id, relevance in fused:
                run = facts[fact_id].run_id
                if run is not None and relevance > best_of_run.get(run, float("-inf")):
                    best_of_run[run] = relevance
            fused = [(fact_id, relevance + self.config.run_weight * best_of_run.get(facts[fact_id].run_id, 0.0)
                      if facts[fact_id].run_id is not None else relevance) for fact_id, relevance in fused]
        return sorted(fused, key=lambda pair: (-pair[1], pair[0]))

    def retrieve(self, query: str, k: int | None = None, user: str | None = None, *, row: int | None = None,
                 min_similarity: float | None = None, touch: bool = True,
                 accept: Callable[[Fact], bool] | None = None) -> list[RetrievedFact]:
        """The user's best live facts for `query`, ranked by the configured blend, with their scores.

        Hybrid: the `max(4k, 32)` nearest facts by vector and the same number by BM25 are fused
        (`retrieval`); `min_similarity` is a floor on the fused relevance; `accept` filters facts
        (e.g. on metadata) before ranking.
        """
        query = check_text(query, "query")
        user = self.store.require_user(user or self.user)
        k = k or self.config.top_k
        floor = self.config.min_similarity if min_similarity is None else min_similarity
        vector = np.asarray(self.embed([query])[0], dtype=np.float32)
        pool = max(4 * k, 32)
        method = self.config.retrieval
        dense = self.store.search(user, vector, pool, row=row, accept=accept) if method != "lexical" else []
        lexical = self.store.lexical_search(user, query, pool, row=row, accept=accept) if method != "dense" else []
        facts = {fact.id: fact for fact, _ in dense + lexical}
        cosines = {fact.id: cosine for fact, cosine in dense}
        only_lexical = [fact.id for fact, _ in lexical if fact.id not in cosines]
        if only_lexical:
            cosines.update(zip(only_lexical, (self.store.embeddings(user, only_lexical) @ vector).tolist(),
                               strict=True))
        bm25 = {fact.id: score for fact, score in lexical}
        fused = fuse_rankings([(f.id, c) for f, c in dense], [(f.id, s) for f, s in lexical], method, cosines)
        fused = self._conversation_fusion(fused, facts, bm25, method)
        asked = question_slot(query) if self.config.slot_bonus else None
        if asked is not None:
            head = f"user|{asked.split()[-1]}"
            fused = [(fact_id, relevance + (self.config.slot_bonus if facts[fact_id].slot == head
                                            and _fills(facts[fact_id], asked) else 0.0))
                     for fact_id, relevance in fused]
        now = self.store.clock()
        ranked = []
        for fact_id, relevance in fused:
            if relevance < floor:
                continue
            fact = facts[fact_id]
            importance = self.decayed_importance(fact, now)
            recency = 0.5 ** (max(0.0, now - fact.last_used) / self.config.recency_half_life)
            score = (self.config.similarity_weight * relevance + self.config.importance_weight * importance
                     + self.config.recency_weight * recency)
            ranked.append(RetrievedFact(fact, score, cosines.get(fact_id, 0.0), importance, relevance,
                                        bm25.get(fact_id, 0.0)))
        ranked.sort(key=lambda r: (-r.score, r.fact.id))
        ranked = ranked[:k]
        if touch and ranked:
            waiting = getattr(self._turns, "touches", None)
            if waiting is None:
                self.store.touch([r.fact.id for r in ranked], user)
            else:  # inside `turn()`: written with the turn's facts
                waiting.append((user, [r.fact.id for r in ranked], now))
        return ranked


class _TurnFacts:
    """The near-duplicate check of one fact of a turn learned at once (`FactBank.remember_turn`): the
    candidates the turn's one pass found for it in the index (committed facts at or above the
    threshold, best first), the facts the turn stored before it (in its open transaction, not in the
    index yet) and what those superseded. The answer is the one a search at that point would give."""

    def __init__(self, threshold: float, now: float):
        self.threshold, self.now = threshold, now
        self.candidates: list[tuple[int, float]] | None = None
        self.stored: list[tuple[Fact, np.ndarray]] = []
        self.gone: set[int] = set()

    def nearest(self, store: Any, user: str, embedding: np.ndarray, replaced: list[Fact], row: int | None
                ) -> tuple[Fact, float] | None:
        from memlm.facts.vector_index import faiss_knn

        left_out = self.gone | {fact.id for fact in replaced}

        def usable(fact: Fact) -> bool:
            return fact.id not in left_out and fact.live(self.now) and (row is None or fact.row in (None, row))

        best: tuple[Fact, float] | None = None
        query = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        for fact, vector in self.stored:  # the same kernel as the index: the same cosine
            cosine = float(faiss_knn(query, vector.reshape(1, -1), 1)[0][0, 0])
            if usable(fact) and cosine >= self.threshold and (best is None or cosine > best[1]):
                best = (fact, cosine)
        if self.candidates is None:  # no one-pass index: a search, then the turn's own facts
            found = [(fact, cosine) for fact, cosine in store.search(user, query[0], 1 + len(left_out), row=row)
                     if fact.id not in left_out]
            if found and (best is None or found[0][1] > best[1]):
                best = found[0]
            return best
        for start in range(0, len(self.candidates), 16):
            chunk = self.candidates[start:start + 16]
            facts = {fact.id: fact for fact in store.facts_by_id(user, [fact_id for fact_id, _ in chunk])}
            for fact_id, cosine in chunk:
                fact = facts.get(fact_id)
                if fact is not None and usable(fact):
                    return (fact, cosine) if best is None or cosine > best[1] else best
        return best


def _hybrid_weight(method: str) -> float | None:
    return float(method.split(":", 1)[1]) if method.startswith("hybrid:") else None


def slot_key(slot: Slot | None) -> str | None:
    """What the store indexes a slot by: its subject and the last word of its attribute (the part
    every matching attribute shares, see `memlm.facts.slots.same_attribute`)."""
    return None if slot is None else f"{slot.subject}|{slot.attribute.split()[-1]}"


def _fills(fact: Fact, attribute: str) -> bool:
    slot = find_slot(fact.spoken or fact.text)
    return slot is not None and slot.subject == "user" and same_attribute(attribute, slot.attribute)


def _ids(facts: list[Fact]) -> str:
    return ", ".join(f"fact {fact.id}" for fact in facts)
