"""`bank`: the continual-learning fact memory, connected to a language model.

The facts themselves (learning, duplicates, importance, ranking, eviction, decay, the store) are
`memlm.facts.FactBank`'s business; this module is the adapter that gives it a model:

* importance is measured with the model (`loss_improvement`: how much the fact, put in the prompt,
  lowers the loss of its own tokens);
* retrieval vectors come from the offline MiniLM or from the backbone itself (`encoder`);
* what is retrieved reaches the model in two ways (`fusion`):
  - `prompt`: facts go into the chat messages (`memlm.fusion.fuse_facts`) and their tokens get a
    small logit bonus while the model answers (`fact_token_bias`); works untrained, and is what
    `ChatSession` and the evaluation harness use;
  - `latent`: every position of the last decoder layer attends over the latent vectors of the row's
    facts (the backbone's position-weighted mean of the fact's hidden states) and adds the result
    through a per-channel gate that starts at zero: untrained it changes nothing.

Writes through `MemoryModel` (`write()`, `memorize()`, the turn after `generate()`) store each
segment as a passage (`write_segments`), through the same `FactBank.learn` as every other fact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from memlm.config import MemoryConfig, check_range
from memlm.errors import ConfigError, CorruptedFileError
from memlm.facts.backends import open_fact_store, redact, scheme_of
from memlm.facts.bank import FactBank, FactBankConfig, LearnResult, RetrievedFact
from memlm.facts.extraction import second_person
from memlm.facts.store import CONTROL_CHARACTERS, FactStore
from memlm.fusion import FactTokenBias, fact_token_ids, facts_block, fuse_facts
from memlm.hooks import BackboneLayout, add_capture_hook, add_output_hook
from memlm.memories.base import FileState, Memory, MemoryContext, PromptFusion, Provenance, StaticDecode, TextLearning
from memlm.paths import check_name
from memlm.serialization import atomic_write_json, read_json

ENCODERS = ("minilm", "backbone")
FUSIONS = ("prompt", "latent", "both")
SNAPSHOT_FILE = "facts.sqlite"
LIVE_STORE_FILE = "store.json"
MAX_SEGMENT_CHARS = 20_000


@dataclass
class BankConfig(MemoryConfig, FactBankConfig):
    """Config of the `bank` memory: `FactBankConfig`'s learning, ranking and forgetting options, plus:

    Args:
        store: SQLite file shared by all users of this bank (None: in memory, saved with the state).
        encoder: "minilm" (offline all-MiniLM-L6-v2 sentence vectors) or "backbone" (the backbone's
            position-weighted mean hidden state).
        fusion: "prompt", "latent" or "both" (see the module docstring).
        fact_token_bias: logit bonus, during the next `generate()`, for every token of the facts prompt
            fusion placed in the prompt (0: off; see `memlm.fusion.FactTokenBias`).
        write_segments: store segments written through `MemoryModel` as passages.
        latent_top_k: facts each position attends over in latent fusion.
    """

    mechanism: ClassVar[str] = "bank"

    store: str | None = None
    encoder: str = "minilm"
    fusion: str = "both"
    fact_token_bias: float = 2.0
    write_segments: bool = True
    latent_top_k: int = 8

    def validate(self) -> None:
        MemoryConfig.validate(self)
        FactBankConfig.validate(self)
        for name, value, allowed in (("encoder", self.encoder, ENCODERS), ("fusion", self.fusion, FUSIONS)):
            if value not in allowed:
                raise ConfigError(f"bank: {name} must be one of {allowed}, got {value!r}")
        check_range("fact_token_bias", self.fact_token_bias, 0.0, 20.0, mechanism="bank")
        if not isinstance(self.latent_top_k, int) or self.latent_top_k < 1:
            raise ConfigError(f"bank: latent_top_k must be a positive integer, got {self.latent_top_k!r}")

    @property
    def uses_prompt(self) -> bool:
        return self.fusion in ("prompt", "both")

    @property
    def uses_latent(self) -> bool:
        return self.fusion in ("latent", "both")


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


class BankMemory(Memory, FileState, Provenance, PromptFusion, TextLearning, StaticDecode):
    """Continual-learning fact bank: stores what helps, retrieves by similarity and importance."""

    config_class = BankConfig
    # 1: prompt fusion lists the facts with the most relevant last; 2: hybrid retrieval (dense + BM25),
    # superseded facts, the recap in the second person, the question-slot bonus
    revision = 2
    config: BankConfig

    def __init__(self, config: BankConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        self.backbone_layout = layout  # a plain dataclass: the backbone does not become a submodule
        self.hidden_size = layout.hidden_size
        self.reader = LatentReader(layout.hidden_size) if config.uses_latent else None
        self._encoder: Any = None
        self._write_segments = config.write_segments
        self._measuring = False
        self._latent_cache: tuple[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self._fact_tokens: dict[int, list[int]] = {}  # per row: tokens of the facts just put in its prompt
        self._rows = 0  # rows of the batch `reset(batch_size)` announced
        store = open_fact_store(config.store, self.dimension, self.encoder_name)
        latent = self._latent_if_possible if config.uses_latent else None
        self.facts = FactBank(config, store, self.embed, measure=self.loss_improvement, latent=latent)

    def needs_training(self) -> bool:
        return self.config.fusion == "latent"  # prompt fusion works untrained

    # The fact bank's API, on the memory itself (`model.memories["bank"].learn(...)`).
    def learn(self, text: str, category: str | None = None, user: str | None = None, **kwargs: Any) -> LearnResult:
        return self.facts.learn(text, category, user, **kwargs)

    def retrieve(self, query: str, k: int | None = None, user: str | None = None, **kwargs: Any
                 ) -> list[RetrievedFact]:
        return self.facts.retrieve(query, k, user, **kwargs)

    @property
    def store(self) -> FactStore:
        return self.facts.store

    @property
    def user(self) -> str:
        return self.facts.user

    # --- PromptFusion ------------------------------------------------------------------------
    def augment_messages(self, messages: list[dict[str, str]], query: str, row: int | None = None
                         ) -> tuple[list[dict[str, str]], list[RetrievedFact]]:
        """Fuse the facts retrieved for `query` (of batch row `row`'s facts and the shared ones, when
        given) into `messages`; their tokens get the bonus in that row's next reply."""
        key = 0 if row is None else row
        if row is None or row == 0:
            self._fact_tokens = {}
        self._fact_tokens.pop(key, None)
        if not self.config.uses_prompt or not query.strip() or not self.store.has_user(self.user):
            return messages, []
        used = self.facts.retrieve(query, row=row)
        if not used:
            return messages, []
        texts = [r.fact.text for r in used]
        addressed = [second_person(r.fact.text, r.fact.spoken) for r in used]
        if self.config.fact_token_bias > 0 and self.context.tokenizer is not None:
            self._fact_tokens[key] = fact_token_ids(self.context.tokenizer, addressed)
        return fuse_facts(messages, texts, addressed), used

    def logits_processors(self) -> list[Any]:
        tokens, self._fact_tokens = self._fact_tokens, {}
        if not tokens:
            return []
        rows = max(max(tokens) + 1, self._rows)
        return [FactTokenBias([tokens.get(row, []) for row in range(rows)], self.config.fact_token_bias)]

    # --- TextLearning ------------------------------------------------------------------------
    def observe_turn(self, user_text: str, reply: str | None, judge: Callable[[str], bool] | None = None
                     ) -> list[LearnResult]:
        return self.facts.remember_turn(user_text, reply, judge=judge)

    def learn_text(self, text: str) -> list[LearnResult]:
        return [self.facts.learn(text, source=text)]

    @contextlib.contextmanager
    def segment_writes(self, enabled: bool) -> Iterator[None]:
        previous, self._write_segments = self._write_segments, enabled
        try:
            yield
        finally:
            self._write_segments = previous

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
        return _unit_rows(self.latent_vectors(texts))

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

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        if self.reader is not None:
            self.track(add_output_hook(layout.layers[-1], self._read_latent))
        self.track(add_capture_hook(layout.final_norm or layout.layers[-1], self._capture))

    def graph_blocker(self) -> str | None:
        # Prompt fusion acts before decoding (the prompt) and through a fixed logit bonus: nothing to read
        # per step. Latent fusion picks each row's facts on the host at every step.
        return "latent fusion picks each row's facts on the host at every step" if self.reader is not None else None

    def _capture(self, hidden_states: torch.Tensor) -> None:
        if self._write_segments and not self._measuring:
            self.capture("hidden", hidden_states.detach())

    def _latents(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(row of each fact, -1 = every row; latent vectors) on `device`, rebuilt only when the
        user's facts change: this runs on every forward, decode steps included."""
        user = self.user
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
        fact_rows, vectors = latents
        batch_size = hidden_states.shape[0]
        stored_rows = max(int(fact_rows.max()) + 1, self._rows)
        # Facts written from batch row r serve the rows that read r (beams repeat each input row);
        # facts with no row serve every row.
        sources = self.source_rows(batch_size, stored_rows).tolist() if stored_rows > 0 else [None] * batch_size
        outputs = []
        for row_index, source in enumerate(sources):
            visible = (fact_rows == -1) | (fact_rows == (-2 if source is None else source))
            if not bool(visible.any()):
                outputs.append(hidden_states[row_index])
                continue
            outputs.append(self.reader(hidden_states[row_index], vectors[visible], self.config.latent_top_k))
        return torch.stack(outputs)

    # --- writing (segments through MemoryModel) ----------------------------------------------
    def write(self) -> None:
        hidden_states = self.captured("hidden")
        if hidden_states is None:
            return
        # MemoryModel.forward sets the mask of every pass (ones where the caller gave none).
        mask, input_ids, tokenizer = self.context.attention_mask, self.context.input_ids, self.context.tokenizer
        for row in range(hidden_states.shape[0]):
            valid = mask[row].bool()
            if not bool(valid.any()):
                continue
            latent = position_weighted_mean(hidden_states[row][valid.to(hidden_states.device)]).float().cpu().numpy()
            ids = input_ids[row][valid.to(input_ids.device)].tolist() if input_ids is not None else []
            text = tokenizer.decode(ids, skip_special_tokens=True).strip() if tokenizer is not None and ids else ""
            if not text:  # no tokenizer: the token ids are the most faithful text there is
                text = "tokens: " + " ".join(map(str, ids)) if ids else f"segment of {int(valid.sum())} tokens"
            text = CONTROL_CHARACTERS.sub(" ", text[:MAX_SEGMENT_CHARS]).strip() or "(blank segment)"
            # With the backbone encoder the captured states are the encoder's view already: no extra pass.
            embedding = None if self.config.encoder == "minilm" else _unit_rows(latent[None])[0]
            self.facts.learn(text, "segment", importance=1.0, row=row, actor="write", embedding=embedding,
                             latent=latent if self.reader is not None else None)

    # --- state -------------------------------------------------------------------------------
    def reset(self, batch_size: int | None = None) -> None:
        """Forget every fact of the current user; `batch_size` announces the rows of the coming batch."""
        self._fact_tokens = {}
        self._rows = batch_size or 0
        if self.store.has_user(self.user):
            self.store.delete_all(self.user, actor="reset")

    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        if user is not None:
            self.facts.user = check_name(user, "user id")
        if session is not None:
            self.facts.session = session

    def state_tensors(self) -> dict[str, torch.Tensor]:
        # The facts live in SQLite (state files); this records their extent so a state file and the
        # database it belongs with can be told apart, and makes a restored bank comparable.
        return {"extent": torch.tensor([self.store.count(self.user), self.store.version(self.user)],
                                       dtype=torch.int64)}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().check_state_tensors(tensors)
        if tuple(tensors["extent"].shape) != (2,):
            raise CorruptedFileError(f"bank: saved extent has shape {tuple(tensors['extent'].shape)}, expected (2,)")

    def save_state_files(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.config.store is not None:
            # A bank on a database file is its own persistence (written at every change, shared by
            # processes): the state only records where it lives, so loading never rolls it back.
            where = (redact(self.config.store) if scheme_of(self.config.store) != "sqlite"
                     else str(Path(self.config.store).resolve()))
            atomic_write_json(directory / LIVE_STORE_FILE, {"store": where,
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
        return {
            "user": self.user,
            "facts": self.store.count(self.user),
            "users": len(self.store.users()),
            "encoder": self.encoder_name,
            "fusion": self.config.fusion,
            "store": self.config.store or "in memory",
        }


def position_weighted_mean(hidden_states: torch.Tensor) -> torch.Tensor:
    """Mean over positions weighted 1..T: later tokens have read the whole fact, so they count more."""
    weights = torch.arange(1, hidden_states.shape[0] + 1, device=hidden_states.device, dtype=hidden_states.dtype)
    return (weights.unsqueeze(-1) * hidden_states).sum(0) / weights.sum()  # (C,)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-6)
