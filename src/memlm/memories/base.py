"""The base class every memory mechanism derives from, and small helpers they share.

A memory's life in one call of `MemoryModel`:

1. `begin_call()` — ephemeral memories clear their state here.
2. The backbone runs; the memory's hooks *read* (change hidden states) on every forward, including
   1-token decode steps with a KV cache.
3. If the wrapper is *writing* (once per segment or turn, never per decode step), hooks may also
   *capture* what they need while `context.capturing` is true, and the wrapper then calls `write()`.

State (what a memory has remembered) is kept apart from weights (what it has learned): weights are
the module's parameters; state is exposed through `state_tensors()` / `load_state_tensors()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from memlm.config import MemoryConfig
from memlm.errors import IncompatibleMemoryError, MemoryStateError
from memlm.hooks import BackboneLayout


@dataclass
class MemoryContext:
    """What the wrapper tells its memories about the forward pass under way."""

    capturing: bool = False
    attention_mask: torch.Tensor | None = None  # (B, T) of the pass being captured
    input_ids: torch.Tensor | None = None  # (B, T) of the pass being captured, when known
    tokenizer: Any = None  # lets memories record the text they store


class Memory(nn.Module):
    """Base class: subclasses implement `attach()` and, if they remember, `write()` and state."""

    config_class: ClassVar[type[MemoryConfig]] = MemoryConfig
    # Bumped when a change alters what the mechanism outputs for the same config and weights, so that
    # evaluation results cached under the old behaviour are recomputed rather than reused.
    revision: ClassVar[int] = 0

    def __init__(self, config: MemoryConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__()
        self.config = config
        self.context = context
        self._hook_handles: list[RemovableHandle] = []

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        """Register forward hooks on the backbone through `self.track(handle)`."""
        raise NotImplementedError

    def track(self, handle: RemovableHandle) -> RemovableHandle:
        self._hook_handles.append(handle)
        return handle

    def remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()

    # --- state -------------------------------------------------------------------------------
    def begin_call(self) -> None:
        """Called at the start of each `generate()` / `memorize()` call."""
        if self.config.mode == "ephemeral":
            self.reset()

    def reset(self, batch_size: int | None = None) -> None:
        """Forget everything remembered; `batch_size` pre-sizes the state (else sized lazily)."""

    def write(self) -> None:
        """Update the state from what the hooks captured during the last forward pass."""

    def clear_captures(self) -> None:
        """Drop whatever the hooks captured (called after `write()` and on errors)."""

    def detach_state(self) -> None:
        """Cut the autograd graph through the state (truncated backpropagation through time)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Raise `IncompatibleMemoryError` if `tensors` cannot be loaded; must not change state."""
        expected = set(self.state_tensors())
        if set(tensors) != expected:
            raise IncompatibleMemoryError(
                f"{self.config.mechanism}: saved state has entries {sorted(tensors)}, "
                f"expected {sorted(expected)}"
            )

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        """Replace the state; only called after `check_state_tensors()` and `read_state_files()`
        passed. `files` is what `read_state_files()` returned."""

    def save_state_files(self, directory: Path) -> None:
        """Save state that does not fit in tensors (indexes, databases) under `directory`."""

    def read_state_files(self, directory: Path) -> Any:
        """Read and verify what `save_state_files()` wrote, without changing the current state;
        raise a typed error if it is missing or damaged."""
        return None

    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        """Label what this memory stores from now on (memories that keep records use it)."""

    def augment_messages(self, messages: list[dict[str, str]], query: str) -> tuple[list[dict[str, str]], list[Any]]:
        """Memories that fuse through the prompt add what they retrieved for `query` to the chat
        messages; returns the messages and what was used. Most memories act inside the model and
        leave the prompt alone."""
        return messages, []

    def logits_processors(self) -> list[Any]:
        """`transformers` logits processors this memory adds to the next `MemoryModel.generate()`
        call (e.g. the bank's bonus for the tokens of the facts it just put in the prompt)."""
        return []

    def observe_turn(self, user_text: str, reply: str | None, judge: Any = None) -> list[Any]:
        """A chat turn as text, for memories that learn from text rather than from hidden states
        (e.g. fact extraction; `judge` may vet sentences); returns what was learned."""
        return []

    def learn_text(self, text: str) -> list[Any]:
        """A statement to keep as it is (continual learning, one fact at a time); memories that learn
        from text store it (the bank: one fact, importance measured). Returns what was learned."""
        return []

    @contextmanager
    def segment_writes(self, enabled: bool) -> Iterator[None]:
        """Memories that also store written segments (e.g. `bank`) can be told not to, here."""
        yield

    @property
    def learns_from_text(self) -> bool:
        """True if chat turns reach this memory through `observe_turn` instead of `write()`."""
        return False

    def summary(self) -> dict[str, Any]:
        """A few numbers describing the current state, for `memlm info` and the chat."""
        return {}


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over valid positions of each row.

    Returns the pooled states (B, C) and a (B,) bool telling which rows had any valid position.
    """
    if attention_mask is None:
        batch_size = hidden_states.shape[0]
        has_tokens = torch.ones(batch_size, dtype=torch.bool, device=hidden_states.device)
        return hidden_states.mean(dim=1), has_tokens
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # (B, T, 1)
    counts = weights.sum(dim=1)  # (B, 1)
    pooled = (hidden_states * weights).sum(dim=1) / counts.clamp(min=1)  # (B, C)
    return pooled, counts.squeeze(-1) > 0


def expand_rows(state: torch.Tensor, batch_size: int, mechanism: str) -> torch.Tensor:
    """Match a per-row state to the batch being processed.

    Beam search and `num_return_sequences` run `k * B` rows built by repeating each input row `k`
    times (`repeat_interleave`), so the state is repeated the same way.
    """
    rows = state.shape[0]
    if rows == batch_size:
        return state
    if rows and batch_size % rows == 0:
        return state.repeat_interleave(batch_size // rows, dim=0)
    raise MemoryStateError(
        f"{mechanism}: the memory holds state for {rows} row(s) but the input has {batch_size}; "
        f"call reset(batch_size={batch_size}) to start a new batch"
    )
