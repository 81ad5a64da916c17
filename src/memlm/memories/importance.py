"""`importance`: the token-importance memory (AutoMemoryModule).

A scoring network rates every token of a segment, and every token already in memory, from the
backbone's hidden states at `score_layer`. Tokens scoring at or above `threshold` are kept, at most
`max_memory_size` per batch row (highest scores win, ties go to the newer token); the kept tokens
ride along into the next segment, prepended to its inputs (positions run on from them), where they
are scored again with the new segment. Untrained, the scorer rates every token below the threshold,
so nothing is kept and the backbone's output is unchanged.

How the scorer learns:

* From relevance labels, when the training data has them (`MemoryContext.token_labels`: which tokens
  a later question needs): a binary cross-entropy between score and label, weighted by `label_weight`.
* From the loss of later segments, by REINFORCE: while training, each candidate is kept with
  probability max(score, `exploration`) (capped at `max_memory_size`); the trainer hands the memory
  each row's later loss (`auxiliary_loss(row_losses)`), and rows whose selection did better than the
  batch average make their decisions more likely (`reinforce_weight`). A score gets no gradient
  through the kept tokens themselves: their presence is all-or-nothing, and scaling an embedding
  would be undone by the first normalisation layer.
* While training the draw is not cut at `max_memory_size` (the cut would bias REINFORCE toward
  drawing more); instead the expected number of kept tokens beyond it costs `budget_weight`.

All three are returned by `auxiliary_loss()`, which the trainer adds to its loss.

The scorer reads each token with `context_tokens` neighbours on each side (a small 1-D convolution
after a per-token projection): a causal model's hidden state of a sentence's first word cannot yet
tell what the sentence is about; its neighbours can. It works for any segment length.

What is kept or dropped is a whole unit (`keep_unit`, `memlm.memories.units`): a word by default, or
a sentence, so a name of several sub-word tokens is kept whole or not at all; `"token"` is the
original token-by-token selection.

Only the hidden states up to `score_layer` matter for writing, so a write pass that serves this
memory alone stops there (`capture_depth`).

`AutoMemoryModule` at the end of this file is the standalone module with the original API
(`forward(embedded_tokens, memory_context) -> (memory_context, scores)`), built from the same scorer
and selection.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memlm.config import MemoryConfig, check_range
from memlm.errors import ConfigError, IncompatibleMemoryError
from memlm.hooks import BackboneLayout, add_capture_hook
from memlm.memories import units
from memlm.memories.base import (
    AuxiliaryLoss,
    InputRewriting,
    Inspectable,
    Memory,
    MemoryContext,
    Provenance,
    SegmentInputs,
    StaticDecode,
)

INITIAL_KEEP_PROBABILITY = 0.25  # below any threshold >= 0.25: untrained, nothing is kept at inference
TRAINING_CAP = 2  # while training, at most this many times max_memory_size tokens are carried


@dataclass
class ImportanceConfig(MemoryConfig):
    """Config of the `importance` memory.

    Args:
        max_memory_size: tokens kept per batch row, at most.
        threshold: score at or above which a token is kept, in (0, 1).
        hidden_dim: width of the scoring network.
        score_layer: the output of this decoder layer is scored (default: a quarter of the depth).
        context_tokens: neighbours on each side the scorer reads with each token.
        exploration: while training, every candidate is kept with at least this probability.
        reinforce_weight: weight of the REINFORCE term (later loss -> selection) in `auxiliary_loss`.
        label_weight: weight of the relevance-label loss (0: labels are ignored).
        positive_weight: weight of a relevant token in that loss (relevant tokens are rare).
        budget_weight: while training, the draw is not cut at `max_memory_size`; instead each token
            the scores expect to keep beyond it costs this much (per `max_memory_size` tokens).
        keep_unit: what is kept or dropped whole: "word" (a word's best token decides), "sentence"
            (a sentence's mean score decides) or "token". Words and sentences need the tokenizer.
        retention: at inference, a kept token competes with the larger of its new score and
            `retention` times its last one, in [0, 1]. Every segment rescores what is kept; over a
            million tokens a fact meets a thousand rescorings, and one low score loses it for good.
            0 (the default) keeps the plain rescoring; 1 lets a token fall only to the capacity cut.
    """

    mechanism: ClassVar[str] = "importance"

    max_memory_size: int = 128
    threshold: float = 0.5
    hidden_dim: int = 128
    score_layer: int | None = None
    context_tokens: int = 4
    exploration: float = 0.1
    reinforce_weight: float = 1.0
    label_weight: float = 1.0
    positive_weight: float = 5.0
    budget_weight: float = 1.0
    keep_unit: str = "word"
    retention: float = 0.0

    def validate(self) -> None:
        super().validate()
        for name in ("max_memory_size", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"importance: {name} must be a positive integer, got {value!r}")
        if self.max_memory_size > 65_536:
            raise ConfigError(f"importance: max_memory_size {self.max_memory_size} is more than any context window")
        check_range("threshold", self.threshold, 0.0, 1.0, low_open=True, high_open=True, mechanism="importance")
        if not isinstance(self.context_tokens, int) or isinstance(self.context_tokens, bool) or not (
                0 <= self.context_tokens <= 64):
            raise ConfigError(f"importance: context_tokens must be an integer in [0, 64], got {self.context_tokens!r}")
        check_range("exploration", self.exploration, 0.0, 1.0, high_open=True, mechanism="importance")
        check_range("reinforce_weight", self.reinforce_weight, 0.0, math.inf, high_open=True,
                    mechanism="importance")
        check_range("label_weight", self.label_weight, 0.0, math.inf, high_open=True, mechanism="importance")
        check_range("budget_weight", self.budget_weight, 0.0, math.inf, high_open=True, mechanism="importance")
        if self.keep_unit not in units.UNITS:
            raise ConfigError(f"importance: keep_unit must be one of {', '.join(units.UNITS)}, got {self.keep_unit!r}")
        check_range("positive_weight", self.positive_weight, 0.0, math.inf, low_open=True, high_open=True,
                    mechanism="importance")
        check_range("retention", self.retention, 0.0, 1.0, mechanism="importance")


class TokenScorer(nn.Module):
    """Per-token importance logits from token vectors, each read with its neighbours: (B, T, D) -> (B, T)."""

    def __init__(self, token_dim: int, hidden_dim: int, context_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(token_dim)  # hidden states come at any scale; the scorer reads their direction
        self.project = nn.Linear(token_dim, hidden_dim)
        self.neighbours = nn.Conv1d(hidden_dim, hidden_dim, 2 * context_tokens + 1, padding=context_tokens)
        self.out = nn.Linear(hidden_dim, 1)
        with torch.no_grad():  # untrained, every token scores INITIAL_KEEP_PROBABILITY: below the threshold
            self.out.weight.zero_()
            self.out.bias.fill_(math.log(INITIAL_KEEP_PROBABILITY / (1 - INITIAL_KEEP_PROBABILITY)))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        features = nn.functional.gelu(self.project(self.norm(tokens.to(self.project.weight.dtype))))  # (B, T, H)
        if mask is not None:  # padding contributes nothing to its neighbours
            features = features * mask.unsqueeze(-1).to(features.dtype)
        mixed = nn.functional.gelu(self.neighbours(features.transpose(1, 2)).transpose(1, 2))  # (B, T, H)
        return self.out(features + mixed).squeeze(-1)  # (B, T) logits


def select_tokens(logits: torch.Tensor, valid: torch.Tensor, capacity: int, threshold: float,
                  exploration: float | None = None, unit: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates to keep, (B, T) bool, and which were drawn.

    At inference (`exploration=None`) a candidate is drawn when its score reaches `threshold`, and
    at most `capacity` of those are kept per row (`cap_tokens`). While training, each candidate is
    drawn with probability max(score, exploration), and the draw is the decision (no cut).
    With `unit` ((B, T), `units.unit_index`), `logits` are the units' (`units.unit_logits`): the
    tokens of a unit share one draw, and the cut keeps or drops whole units.
    """
    scores = logits.float()
    if exploration is not None:  # a uniform draw below the keep probability, compared as a logit
        keep_probability = torch.sigmoid(scores).clamp(min=exploration)
        uniform = torch.rand_like(scores)
        if unit is not None:  # one draw per unit: the value at the unit's own number
            uniform = uniform.gather(1, unit)
        drawn = valid & (torch.logit(keep_probability) >= torch.logit(uniform.clamp(1e-6, 1 - 1e-6)))
        return drawn, drawn
    drawn = valid & (scores >= math.log(threshold / (1 - threshold)))
    if unit is not None:
        return units.cap_units(drawn, scores, unit, capacity), drawn
    return cap_tokens(drawn, scores, capacity), drawn


def cap_tokens(keep: torch.Tensor, scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """At most `capacity` of the `keep` candidates per row: highest scores win, ties go to the newer."""
    most = int(keep.sum(-1).amax()) if keep.numel() else 0
    if most <= capacity:
        return keep
    newest_first = torch.arange(scores.shape[1] - 1, -1, -1, device=scores.device)
    ranked = torch.where(keep, scores.float(), -math.inf)[:, newest_first]
    # A stable sort by score keeps the newest-first order among equal scores: ties go to the newer.
    order = newest_first[ranked.argsort(dim=-1, descending=True, stable=True)[:, :capacity]]  # (B, capacity)
    limited = torch.zeros_like(keep)
    limited.scatter_(1, order, True)
    return limited & keep


class ImportanceMemory(Memory, InputRewriting, AuxiliaryLoss, Provenance, Inspectable, StaticDecode):
    """Token-importance memory: a scorer keeps the tokens that matter and prepends them to later segments."""

    config_class = ImportanceConfig
    config: ImportanceConfig
    # Decode steps read nothing of it: the kept tokens enter once, in front of the prompt (rewrite_inputs).
    decode_state_names = ()

    def __init__(self, config: ImportanceConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        layer = layout.num_layers // 4 if config.score_layer is None else config.score_layer
        self.score_layer = layout.resolve_layer(layer)
        self.scorer = TokenScorer(layout.hidden_size, config.hidden_dim, config.context_tokens)
        self._pad_id = int(getattr(layout.model.config, "pad_token_id", None) or 0)
        self._vocab_size = int(getattr(layout.model.config.get_text_config(), "vocab_size", 0) or 0)
        self._warned_no_tokenizer = False
        self.user: str | None = None
        self.session: str | None = None
        self._empty_state()
        self._prefix_length = 0  # prefix of the pass under way (set by rewrite_inputs)
        self._aux_loss: torch.Tensor | None = None

    def needs_training(self) -> bool:
        return True

    @property
    def capture_depth(self) -> int:
        """Writing needs the backbone only up to this layer (a write pass may stop after it)."""
        return self.score_layer

    @property
    def max_prefix_length(self) -> int:
        """The most tokens this memory puts in front of a segment."""
        return self.config.max_memory_size

    def _empty_state(self, batch_size: int = 0) -> None:
        device = self.scorer.out.weight.device
        self.kept_ids = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, K), padded on the left
        self.kept_mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)  # (B, K)
        self.kept_scores = torch.zeros(batch_size, 0, device=device)  # (B, K)
        self.kept_positions = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # stream position
        self.kept_segments = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # segment written in
        self.kept_labels = torch.zeros(batch_size, 0, device=device)  # relevance label, when trained with labels
        # While training: per row, the summed log-probability of this selection's decisions and their count.
        self.decision_log_probs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.stream_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # tokens seen per row
        self.segments = 0
        self.last_write: dict[str, Any] | None = None  # scores and decisions of the latest write (inspection)

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        self.track(add_capture_hook(layout.layers[self.score_layer], lambda h: self.capture("hidden", h)))

    # --- InputRewriting ----------------------------------------------------------------------
    def rewrite_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> SegmentInputs:
        self._prefix_length = 0
        if self.kept_ids.shape[1] == 0 or not bool(self.kept_mask.any()):
            return SegmentInputs(input_ids, attention_mask, position_ids, 0)
        batch_size = input_ids.shape[0]
        prefix_ids = self.expand_rows(self.kept_ids, batch_size).to(input_ids.device)
        prefix_mask = self.expand_rows(self.kept_mask, batch_size).to(attention_mask.device)
        ids = torch.cat([prefix_ids, input_ids], dim=1)
        mask = torch.cat([prefix_mask.to(attention_mask.dtype), attention_mask], dim=1)
        # The caller's positions run on from the kept tokens' (left padding stays where it was).
        positions = torch.cat([(prefix_mask.long().cumsum(-1) - 1).clamp(min=0),
                               position_ids + prefix_mask.long().sum(-1, keepdim=True)], dim=1)
        self._prefix_length = prefix_ids.shape[1]
        return SegmentInputs(ids, mask, positions, prefix_ids.shape[1])

    # --- writing -----------------------------------------------------------------------------
    def write(self) -> None:
        hidden_states = self.captured("hidden")
        input_ids, mask = self.context.input_ids, self.context.attention_mask
        if hidden_states is None or input_ids is None:
            return
        batch_size, length = input_ids.shape
        prefix = self._prefix_length
        if self.kept_ids.shape[0]:
            self.check_batch(self.kept_ids.shape[0], batch_size)
        if self.kept_ids.shape[0] == 0:
            self._empty_state(batch_size)
        mask = mask.bool()  # the model always hands a mask to a write
        token_logits = self.scorer(hidden_states, mask)  # (B, K + T)
        offsets = torch.cumsum(mask[:, prefix:].long(), dim=-1) - 1 + self.stream_lengths.unsqueeze(-1)
        positions = torch.cat([self.kept_positions[:, :prefix], offsets], dim=1)  # in the stream
        unit = self._units(input_ids, mask, positions)  # (B, K + T), or None for token units
        training = self.training and torch.is_grad_enabled()
        selection_logits = token_logits if training else self._retained(token_logits, prefix)
        logits = selection_logits if unit is None else units.unit_logits(selection_logits, unit, mask, self._unit)
        keep, drawn = select_tokens(logits, mask, self.config.max_memory_size, self.config.threshold,
                                    self.config.exploration if training else None, unit)
        if training:  # a hard bound on what a segment carries while the scores are still learning
            capacity = TRAINING_CAP * self.config.max_memory_size
            keep = cap_tokens(keep, logits, capacity) if unit is None else units.cap_units(keep, logits, unit, capacity)
        new = length - prefix
        segments = torch.cat([self.kept_segments[:, :prefix],
                              torch.full((batch_size, new), self.segments, device=input_ids.device)], dim=1)
        labels = self._candidate_labels(batch_size, prefix, new, input_ids.device)
        if labels is not None and self.config.label_weight > 0:  # each token learns its label
            self._add_loss(self._label_loss_of(token_logits, labels, mask))
        scores = torch.sigmoid(logits.float())
        if training:
            # The draw is not cut at max_memory_size while training (a cut would be part of the
            # policy); instead, expecting to keep more than that costs `budget_weight` per excess token.
            expected = (scores * mask).sum(-1)  # (B,)
            excess = torch.relu(expected - self.config.max_memory_size) / self.config.max_memory_size
            self._add_loss(self.config.budget_weight * excess.mean())
            keep_probability = scores.clamp(min=self.config.exploration, max=1 - 1e-6)
            # The policy is the draw; the capacity cut after it is a fixed rule, not part of its probability.
            # One decision per unit, counted at its first token.
            decided = mask if unit is None else mask & units.first_of_unit(unit)
            log_probs = torch.where(drawn, keep_probability.log(), torch.log1p(-keep_probability)) * decided
            decisions = (log_probs.sum(-1), decided.sum(-1).float())
            self.decision_log_probs = decisions if self.decision_log_probs is None else tuple(
                total + part for total, part in zip(self.decision_log_probs, decisions, strict=True))
        self.last_write = {"scores": scores.detach(), "kept": keep, "input_ids": input_ids, "mask": mask,
                           "prefix": prefix}
        self._store(keep, input_ids, scores, positions, segments, labels)
        self.stream_lengths = self.stream_lengths + mask[:, prefix:].long().sum(-1)
        self.segments += 1

    def _retained(self, token_logits: torch.Tensor, prefix: int) -> torch.Tensor:
        """The kept tokens' logits raised to `retention` times their last score (see ImportanceConfig)."""
        if self.config.retention == 0 or prefix == 0:
            return token_logits
        fresh = token_logits[:, :prefix].float()
        last = self.config.retention * self.kept_scores[:, :prefix].float()
        # Compared as probabilities, where the last score was stored: a round trip through logit would
        # make an equal score a hair larger and break the cut's "ties go to the newer".
        kept = torch.where(last > torch.sigmoid(fresh), torch.logit(last.clamp(1e-6, 1 - 1e-6)), fresh)
        return torch.cat([kept.to(token_logits.dtype), token_logits[:, prefix:]], dim=1)

    @property
    def _unit(self) -> str:
        """The unit in force: words and sentences need the tokenizer; without one, tokens (warned once)."""
        if self.config.keep_unit != "token" and self.context.tokenizer is None:
            if not self._warned_no_tokenizer:
                warnings.warn(f"importance: keep_unit={self.config.keep_unit!r} needs the tokenizer "
                              "(memlm.attach(model, ..., tokenizer=tokenizer)); selecting single tokens", stacklevel=3)
                self._warned_no_tokenizer = True
            return "token"
        return self.config.keep_unit

    def _units(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """Each candidate's unit number (`units.unit_index`). Tokens not next to each other in the stream
        never share a unit (two kept words side by side in the prefix stay two), but a word cut by the
        segment boundary, its first part kept, joins its rest in the new segment."""
        unit = self._unit
        if unit == "token":
            return None
        previous = torch.nn.functional.pad(positions, (1, 0), value=-2)[:, :-1]
        breaks = positions != previous + 1
        return units.unit_index(input_ids, mask, unit, self.context.tokenizer, self._vocab_size, breaks)

    def _candidate_labels(self, batch_size: int, prefix: int, new: int, device: torch.device) -> torch.Tensor | None:
        labels = self.context.token_labels
        if labels is None:
            return None
        if tuple(labels.shape) != (batch_size, new):
            raise IncompatibleMemoryError(f"importance: token_labels have shape {tuple(labels.shape)}, "
                                          f"expected {(batch_size, new)} (one per token written)")
        return torch.cat([self.kept_labels[:, :prefix].to(device), labels.to(device=device, dtype=torch.float32)], 1)

    def _label_loss_of(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float() * (1 + (self.config.positive_weight - 1) * labels)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, weight=weights, reduction="sum")
        return self.config.label_weight * loss / mask.float().sum().clamp(min=1)

    def _add_loss(self, loss: torch.Tensor) -> None:
        self._aux_loss = loss if self._aux_loss is None else self._aux_loss + loss

    def _store(self, keep: torch.Tensor, input_ids: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor,
               segments: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Keep the selected candidates of each row, in stream order, left-padded to the longest row."""
        length = keep.shape[1]
        kept_counts = keep.sum(-1)  # (B,)
        count = int(kept_counts.amax()) if kept_counts.numel() else 0
        candidates = torch.arange(length, device=keep.device)
        ordered = torch.where(keep, candidates, length).sort(dim=-1).values  # kept positions first, ascending
        slots = torch.arange(count, device=keep.device).unsqueeze(0)  # (1, count)
        shift = (count - kept_counts).unsqueeze(-1)  # (B, 1): padding slots on the left of each row
        valid = slots >= shift  # (B, count)
        source = torch.where(valid, ordered.gather(1, (slots - shift).clamp(min=0).expand(keep.shape[0], -1)), 0)
        self.kept_mask = valid
        self.kept_ids = torch.where(valid, input_ids.gather(1, source), self._pad_id)
        self.kept_scores = torch.where(valid, scores.detach().gather(1, source), 0.0)
        self.kept_positions = torch.where(valid, positions.gather(1, source), 0)
        self.kept_segments = torch.where(valid, segments.gather(1, source), 0)
        self.kept_labels = (labels.gather(1, source) * valid if labels is not None
                            else torch.zeros_like(self.kept_scores))

    # --- AuxiliaryLoss -----------------------------------------------------------------------
    def auxiliary_loss(self, row_losses: torch.Tensor | None = None) -> torch.Tensor | None:
        """Label and sparsity terms since the last call, plus REINFORCE when `row_losses` (B,), each
        row's loss on what came after its selections, is given."""
        loss, self._aux_loss = self._aux_loss, None
        log_probs, self.decision_log_probs = self.decision_log_probs, None
        if row_losses is not None and log_probs is not None and self.config.reinforce_weight > 0 \
                and log_probs[0].shape[0] == row_losses.shape[0] > 1:
            total, decisions = log_probs
            losses = row_losses.detach().float().to(total.device)
            # The batch mean as baseline, in units of the batch's spread; and the mean log-probability
            # of one decision, not their sum: a 16K-token sample makes 16K decisions, and a summed
            # term grows with the length until one update throws the scores (and the loss) to NaN.
            advantage = (losses - losses.mean()) / losses.std().clamp(min=1e-3)
            reinforce = self.config.reinforce_weight * (advantage * total / decisions.clamp(min=1)).mean()
            loss = reinforce if loss is None else loss + reinforce
        return loss

    # --- Provenance, listing, deleting -------------------------------------------------------
    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        self.user, self.session = user, session

    def kept_tokens(self, row: int | None = None) -> list[dict[str, Any]]:
        """Every kept token with its provenance: row, text, token id, stream position, segment, score."""
        tokenizer, items = self.context.tokenizer, []
        for row_index in range(self.kept_ids.shape[0]) if row is None else [row]:
            for slot in self.kept_mask[row_index].nonzero().flatten().tolist():
                token = int(self.kept_ids[row_index, slot])
                items.append({"row": row_index, "token": token,
                              "text": tokenizer.decode([token]) if tokenizer is not None else str(token),
                              "position": int(self.kept_positions[row_index, slot]),
                              "segment": int(self.kept_segments[row_index, slot]),
                              "score": round(float(self.kept_scores[row_index, slot]), 4),
                              "user": self.user, "session": self.session})
        return items

    def add_tokens(self, token_ids: torch.Tensor, score: float = 1.0) -> None:
        """Keep these tokens (B, n) as if the scorer had rated them `score` ("remember this"); beyond
        `max_memory_size` the highest scores win, ties to the newer, as for any write."""
        token_ids = token_ids.reshape(-1, token_ids.shape[-1]).to(self.kept_ids.device)
        batch_size, count = token_ids.shape
        if self.kept_ids.shape[0] == 0:
            self._empty_state(batch_size)
        self.check_batch(self.kept_ids.shape[0], batch_size)
        ids = torch.cat([self.kept_ids, token_ids], dim=1)
        scores = torch.cat([self.kept_scores, torch.full((batch_size, count), float(score), device=ids.device)], 1)
        valid = torch.cat([self.kept_mask, torch.ones_like(token_ids, dtype=torch.bool)], dim=1)
        offsets = torch.arange(count, device=ids.device).unsqueeze(0) + self.stream_lengths.unsqueeze(-1)
        positions = torch.cat([self.kept_positions, offsets], dim=1)
        segments = torch.cat([self.kept_segments, torch.full_like(token_ids, self.segments)], dim=1)
        keep = cap_tokens(valid, torch.logit(scores.clamp(1e-6, 1 - 1e-6)), self.config.max_memory_size)
        self._store(keep, ids, scores, positions, segments, torch.cat(
            [self.kept_labels, torch.zeros_like(token_ids, dtype=torch.float32)], 1))
        self.stream_lengths = self.stream_lengths + count

    def kept_text(self, row: int = 0) -> str:
        """What `row` keeps, as text: runs of tokens adjacent in the stream, joined by " … "."""
        if row >= self.kept_mask.shape[0]:  # no state for this row yet: nothing kept
            return ""
        valid = self.kept_mask[row]
        ids, positions = self.kept_ids[row][valid].tolist(), self.kept_positions[row][valid].tolist()
        runs: list[list[int]] = []
        for index, (token, position) in enumerate(zip(ids, positions, strict=True)):
            if index and position == positions[index - 1] + 1:
                runs[-1].append(token)
            else:
                runs.append([token])
        return " … ".join(self.context.tokenizer.decode(run).strip() for run in runs)

    def search(self, text: str, row: int | None = None) -> list[dict[str, Any]]:
        """Kept tokens whose text contains `text` (case-insensitive)."""
        needle = text.casefold()
        return [item for item in self.kept_tokens(row) if needle in item["text"].casefold()]

    def delete(self, row: int | None = None, positions: list[int] | None = None, text: str | None = None) -> int:
        """Forget kept tokens (of `row`, at stream `positions`, or whose text contains `text`); returns how many."""
        doomed = torch.zeros_like(self.kept_mask)
        for item in self.search(text, row) if text is not None else self.kept_tokens(row):
            row_index = item["row"]
            if positions is None or item["position"] in positions:
                doomed[row_index] |= self.kept_mask[row_index] & (self.kept_positions[row_index] == item["position"])
        self.kept_mask = self.kept_mask & ~doomed
        return int(doomed.sum())

    # --- state -------------------------------------------------------------------------------
    def reset(self, batch_size: int | None = None) -> None:
        self._empty_state(batch_size or 0)
        self._aux_loss = None

    def detach_state(self) -> None:
        if self.decision_log_probs is not None:
            self.decision_log_probs = tuple(part.detach() for part in self.decision_log_probs)

    _STATE = ("kept_ids", "kept_mask", "kept_scores", "kept_positions", "kept_segments", "stream_lengths")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**{name: getattr(self, name).detach().cpu() for name in self._STATE},
                "segments": torch.tensor([self.segments], dtype=torch.long)}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().check_state_tensors(tensors)
        shape = tuple(tensors["kept_ids"].shape)
        if len(shape) != 2 or shape[1] > self.config.max_memory_size or any(
                tuple(tensors[name].shape) != shape for name in self._STATE[:5]) or tuple(
                tensors["stream_lengths"].shape) != shape[:1]:
            raise IncompatibleMemoryError(f"importance: saved state has inconsistent shapes (kept_ids {shape}) "
                                          f"or more than max_memory_size={self.config.max_memory_size} tokens")

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        device = self.scorer.out.weight.device
        for name in self._STATE:
            value = tensors[name].to(device)
            setattr(self, name, value.bool() if name == "kept_mask" else value)
        self.kept_labels = torch.zeros_like(self.kept_scores)
        self.decision_log_probs = None
        self.segments = int(tensors["segments"][0])

    def activity(self) -> dict[str, Any]:
        """Row 0 of the latest write: every candidate's token and score, whether it was kept, and
        how many of the candidates were carried in from memory (the prefix)."""
        if self.last_write is None:
            return {"tokens": [], "scores": torch.zeros(0), "kept": torch.zeros(0, dtype=torch.bool), "prefix": 0,
                    "threshold": self.config.threshold}
        valid = self.last_write["mask"][0].cpu()
        return {"tokens": self.last_write["input_ids"][0].cpu()[valid].tolist(),
                "scores": self.last_write["scores"][0].float().cpu()[valid],
                "kept": self.last_write["kept"][0].cpu()[valid],
                "prefix": int(valid[:self.last_write["prefix"]].sum()), "threshold": self.config.threshold}

    def summary(self) -> dict[str, Any]:
        kept = self.kept_mask.sum(-1)
        return {"segments": self.segments, "rows": int(self.kept_ids.shape[0]),
                "kept_tokens": kept.tolist(), "max_memory_size": self.config.max_memory_size,
                "threshold": self.config.threshold, "score_layer": self.score_layer,
                "mean_kept_score": round(float(self.kept_scores[self.kept_mask].mean()), 4) if kept.sum() else None}


class AutoMemoryModule(nn.Module):
    """The token-importance memory as a standalone module, with the original AutoMemoryModule API.

    Each call scores the new tokens and the tokens already in memory, keeps those at or above
    `threshold` (at most `max_memory_size`, highest scores first, ties to the newer), and returns the
    new memory context and the scores of every candidate (memory first, then the new tokens).
    Memory rows that are all zero are empty. While training, selection is stochastic and the kept
    tokens carry a straight-through factor, so a loss on the memory context trains the scorer.

    Example:
        >>> memory = AutoMemoryModule(token_dim=100, hidden_dim=128, max_memory_size=50)
        >>> context, scores = memory(embedded_tokens, None)        # (B, 50, 100), (B, T)
        >>> context, scores = memory(next_tokens, context)         # carries what mattered forward
    """

    def __init__(self, token_dim: int, hidden_dim: int, max_memory_size: int, threshold: float = 0.5,
                 context_tokens: int = 2):
        super().__init__()
        ImportanceConfig(max_memory_size=max_memory_size, threshold=threshold, hidden_dim=hidden_dim,
                         context_tokens=context_tokens)  # validates the arguments
        self.token_dim, self.max_memory_size, self.threshold = token_dim, max_memory_size, threshold
        self.scorer = TokenScorer(token_dim, hidden_dim, context_tokens)

    def forward(self, embedded_tokens: torch.Tensor, memory_context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        unbatched = embedded_tokens.dim() == 2
        tokens = embedded_tokens.unsqueeze(0) if unbatched else embedded_tokens  # (B, T, D)
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ConfigError(f"AutoMemoryModule: expected tokens of width {self.token_dim} shaped (T, D) or "
                              f"(B, T, D), got {tuple(embedded_tokens.shape)}")
        if memory_context is None:
            memory_context = tokens.new_zeros(tokens.shape[0], 0, self.token_dim)
        elif unbatched and memory_context.dim() == 2:
            memory_context = memory_context.unsqueeze(0)
        if memory_context.shape[0] != tokens.shape[0] or memory_context.shape[-1] != self.token_dim:
            raise ConfigError(f"AutoMemoryModule: memory context {tuple(memory_context.shape)} does not fit "
                              f"tokens {tuple(tokens.shape)}")
        candidates = torch.cat([memory_context, tokens], dim=1)  # (B, M + T, D)
        valid = candidates.detach().abs().sum(-1) > 0
        logits = self.scorer(candidates, valid)
        scores = torch.sigmoid(logits)
        keep, _ = select_tokens(logits, valid, self.max_memory_size, self.threshold, 0.1 if self.training else None)
        keep = cap_tokens(keep, logits, self.max_memory_size)  # a fixed-size context, also while training
        factors = 1 + scores - scores.detach() if self.training else torch.ones_like(scores)
        kept = candidates * (keep * factors).unsqueeze(-1)  # (B, M + T, D): dropped tokens zeroed
        # Compact to max_memory_size rows in stream order: the kept rows first, then zeros.
        order = torch.where(keep, 0, 1).argsort(dim=-1, stable=True)[:, :self.max_memory_size]  # (B, M)
        context = kept.gather(1, order.unsqueeze(-1).expand(-1, -1, self.token_dim))
        if context.shape[1] < self.max_memory_size:
            context = torch.cat([context, context.new_zeros(context.shape[0], self.max_memory_size - context.shape[1],
                                                            self.token_dim)], dim=1)
        return (context[0], scores[0]) if unbatched else (context, scores)
