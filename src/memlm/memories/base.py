"""The `Memory` core every mechanism derives from, and the opt-in capabilities a mechanism may add.

A memory's life in one call of `MemoryModel`:

1. `begin_call()`: ephemeral memories clear their state here.
2. The backbone runs; the memory's hooks *read* (change hidden states) on every forward, including
   1-token decode steps with a KV cache.
3. When the wrapper *writes* (once per segment or turn, never per decode step), hooks hand what they
   need to `self.capture(name, tensor)`; the wrapper then calls `write()`, which reads it back with
   `self.captured(name)`. Captures exist only while writing and the base clears them afterwards.

The core (what every mechanism implements): `attach`, `write`, `reset`, `state_tensors` /
`load_state_tensors` (+ `check_state_tensors`), `summary`. Everything else is a capability: a small
abstract class a mechanism also derives from, which `MemoryModel` detects with `isinstance`:

| capability | what the wrapper does with it |
|---|---|
| `FileState` | saves/loads state that does not fit in tensors (indexes, databases) beside the state file |
| `Provenance` | labels what is stored from now on with a user and a session |
| `PromptFusion` | lets the memory add what it retrieved to the chat messages and bias the next reply |
| `TextLearning` | gives chat turns and statements to the memory as text instead of a write pass |
| `InputRewriting` | lets the memory change the inputs of each segment (e.g. prepend kept tokens) |
| `AuxiliaryLoss` | adds the memory's own training loss to the trainer's |
| `Inspectable` | draws the memory's activity over segments (`memlm inspect`) |
| `StaticDecode` | lets fast greedy decoding (`memlm.decode`: static KV cache, CUDA graphs) run with it attached |

Batch rows follow one rule (`source_rows`): a state of R rows serves a batch of R rows, or of k * R rows
when beam search / `num_return_sequences` repeat each input row k times; anything else is an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

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
    # (B, T) per-token relevance of the caller's tokens in the pass being written, when the training
    # data has it (1: a later question needs this token); memories that select tokens learn from it.
    token_labels: torch.Tensor | None = None


class Memory(nn.Module, ABC):
    """The core of a memory mechanism. Subclasses implement `attach()` and, if they remember
    anything, `write()`, `reset()` and the state methods.

    Example (the skeleton of a new mechanism: `src/memlm/memories/template.py`)::

        class EchoMemory(Memory):
            config_class = EchoConfig

            def attach(self, layout):
                self.track(add_capture_hook(layout.layers[-1], lambda h: self.capture("hidden", h)))

            def write(self):
                hidden = self.captured("hidden")  # (B, T, C), or None if nothing was captured
    """

    config_class: ClassVar[type[MemoryConfig]] = MemoryConfig
    # Bumped when a change alters what the mechanism outputs for the same config and weights, so that
    # evaluation results cached under the old behaviour are recomputed rather than reused.
    revision: ClassVar[int] = 0

    def __init__(self, config: MemoryConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__()
        self.config = config
        self.context = context
        self._hook_handles: list[RemovableHandle] = []
        self._captures: dict[str, Any] = {}

    @property
    def mechanism(self) -> str:
        return self.config.mechanism

    def needs_training(self) -> bool:
        """True when, untrained, this memory changes nothing (its gates start closed): attaching it
        from a config then says so once. Training-free memories return False."""
        return False

    @property
    def capture_depth(self) -> int | None:
        """The deepest decoder layer whose output `write()` needs; None: the whole forward pass. When
        every attached memory names a layer, a write pass stops after the deepest of them."""
        return None

    # --- hooks -------------------------------------------------------------------------------
    @abstractmethod
    def attach(self, layout: BackboneLayout) -> None:
        """Register forward hooks on the backbone, each through `self.track(handle)`."""

    def track(self, handle: Any) -> Any:
        """Remember a hook handle (anything with `.remove()`) so `remove_hooks()` undoes it."""
        self._hook_handles.append(handle)
        return handle

    def has_hooks(self) -> bool:
        return bool(self._hook_handles)

    def remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()

    # --- capture (owned by the base) -----------------------------------------------------------
    def capture(self, name: str, value: Any) -> None:
        """Keep `value` for the coming `write()`; ignored unless the wrapper is writing."""
        if self.context.capturing:
            self._captures[name] = value

    def captured(self, name: str) -> Any:
        """What the hooks captured under `name` during the pass being written (None: nothing)."""
        return self._captures.get(name)

    def captured_under(self, prefix: str) -> dict[str, Any]:
        """Everything captured under names starting with `prefix` (e.g. one entry per layer), by the
        rest of the name."""
        return {name[len(prefix):]: value for name, value in self._captures.items() if name.startswith(prefix)}

    def clear_captures(self) -> None:
        self._captures.clear()

    # --- the one batch-row rule ----------------------------------------------------------------
    def source_rows(self, batch_size: int, stored_rows: int) -> torch.Tensor:
        """For each of `batch_size` rows being processed, the stored row it reads: (batch_size,) int64.

        Beam search and `num_return_sequences` run k * R rows built by repeating each input row k
        times (`repeat_interleave`), so row r reads stored row r // k.
        """
        if stored_rows == batch_size:
            return torch.arange(batch_size)
        if stored_rows and batch_size % stored_rows == 0:
            return torch.arange(batch_size) // (batch_size // stored_rows)
        raise MemoryStateError(
            f"{self.mechanism}: the memory holds state for {stored_rows} row(s) but the input has {batch_size}; "
            f"call reset(batch_size={batch_size}) to start a new batch"
        )

    def expand_rows(self, state: torch.Tensor, batch_size: int) -> torch.Tensor:
        """`state` (R, ...) matched to a batch of `batch_size` rows by `source_rows`."""
        if state.shape[0] == batch_size:
            return state
        return state.index_select(0, self.source_rows(batch_size, state.shape[0]).to(state.device))

    def check_batch(self, stored_rows: int, batch_size: int) -> None:
        """Writes need one state row per input row (no beams while writing)."""
        if stored_rows != batch_size:
            raise MemoryStateError(
                f"{self.mechanism}: the memory holds state for {stored_rows} row(s) but the input has "
                f"{batch_size}; call reset(batch_size={batch_size}) to start a new batch")

    # --- state (the core) ----------------------------------------------------------------------
    def begin_call(self) -> None:
        """Called at the start of each `generate()` / `memorize()` call."""
        if self.config.mode == "ephemeral":
            self.reset()

    def write(self) -> None:  # noqa: B027  (a memory that only reads has nothing to write)
        """Update the state from what the hooks captured during the pass being written."""

    def reset(self, batch_size: int | None = None) -> None:  # noqa: B027
        """Forget everything remembered; `batch_size` pre-sizes per-row state (else sized lazily)."""

    def detach_state(self) -> None:  # noqa: B027
        """Cut the autograd graph through the state (truncated backpropagation through time)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What the memory remembers, as named tensors (saved with `MemoryModel.save_state`)."""
        return {}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Raise `IncompatibleMemoryError` if `tensors` cannot be loaded; must not change state."""
        expected = set(self.state_tensors())
        if set(tensors) != expected:
            raise IncompatibleMemoryError(
                f"{self.mechanism}: saved state has entries {sorted(tensors)}, expected {sorted(expected)}"
            )

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:  # noqa: B027
        """Replace the state; only called after `check_state_tensors()` (and, for `FileState`,
        `read_state_files()`, whose result is `files`) passed."""

    def summary(self) -> dict[str, Any]:
        """A few numbers describing the current state, for `memlm info`, the chat and `memlm inspect`."""
        return {}


# --- capabilities --------------------------------------------------------------------------------
class FileState(ABC):
    """State that does not fit in tensors (a vector index, a database), saved as files."""

    @abstractmethod
    def save_state_files(self, directory: Path) -> None:
        """Save the state's files under `directory`."""

    @abstractmethod
    def read_state_files(self, directory: Path) -> Any:
        """Read and verify what `save_state_files()` wrote, without changing the current state; raise a
        typed error if it is missing or damaged. The result is passed to `load_state_tensors`."""


class Provenance(ABC):
    """Memories that keep records label them with who said what, in which session."""

    @abstractmethod
    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        """Label what this memory stores from now on."""


class PromptFusion(ABC):
    """Memories that reach the model through the prompt."""

    @abstractmethod
    def augment_messages(self, messages: list[dict[str, str]], query: str, row: int | None = None
                         ) -> tuple[list[dict[str, str]], list[Any]]:
        """Add what was retrieved for `query` to the chat messages (those of batch row `row`, when
        rows keep memories of their own); return them and what was used."""

    def logits_processors(self) -> list[Any]:
        """`transformers` logits processors for the next `generate()` (e.g. a bonus for the tokens of
        what `augment_messages` just put in the prompts of each row)."""
        return []


class TextLearning(ABC):
    """Memories that learn from text (chat turns, statements) rather than from a write pass."""

    @abstractmethod
    def observe_turn(self, user_text: str, reply: str | None, judge: Any = None) -> list[Any]:
        """Learn from one chat turn (`judge` may vet sentences); return what was learned."""

    @abstractmethod
    def learn_text(self, text: str) -> list[Any]:
        """Keep a statement as it is (continual learning, one fact at a time); return what was learned."""

    @contextmanager
    def segment_writes(self, enabled: bool) -> Iterator[None]:
        """Turn storing written segments off (or on) for a while, e.g. when the same text has just
        reached the memory through `observe_turn`."""
        yield


class SegmentInputs(NamedTuple):
    """The inputs of one segment after an `InputRewriting` memory changed them."""

    input_ids: torch.Tensor  # (B, M + T)
    attention_mask: torch.Tensor  # (B, M + T)
    position_ids: torch.Tensor  # (B, M + T)
    prefix_length: int  # M: positions added in front of the caller's tokens


class InputRewriting(ABC):
    """Memories that change what the model reads, e.g. prepend the tokens they kept."""

    @property
    @abstractmethod
    def max_prefix_length(self) -> int:
        """The most positions this memory adds in front of a segment (it counts against the window)."""

    @abstractmethod
    def rewrite_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> SegmentInputs:
        """Return the segment's new inputs; called once per segment or prompt (never per decode step)."""


class Inspectable(ABC):
    """Memories whose activity can be drawn over time (`memlm inspect`)."""

    @abstractmethod
    def activity(self) -> dict[str, Any]:
        """A snapshot of the state after the latest write, as plain numbers or CPU tensors."""


class StaticDecode:
    """Memories whose reads on a decode step work with fast greedy decoding (`memlm.decode`): with
    transformers' static KV cache (keys and values of a fixed length, the unused tail masked) and,
    on CUDA, recorded once as a CUDA graph and replayed for every token.

    A recorded step replays the same kernels on the same tensors: its reads must be tensor work only
    (no `.item()`, no Python branch on a value computed on the device, no new tensors from Python
    data), and every tensor they read that a write may replace must be named in `decode_state_names`
    (attributes holding a (rows, ...) tensor or None). While a graph call runs, the decoder points
    those attributes at static buffers holding the current values, so each replay reads the values of
    its own call; a change of shape, dtype or None-ness records the step again."""

    decode_state_names: ClassVar[tuple[str, ...]] = ()

    def graph_blocker(self) -> str | None:
        """Why this memory's decode-step reads cannot be recorded as a CUDA graph now (None: they can);
        the decoder then runs the static cache without graphs."""
        return None


class AuxiliaryLoss(ABC):
    """Memories with a training objective of their own, added to the trainer's loss."""

    @abstractmethod
    def auxiliary_loss(self, row_losses: torch.Tensor | None = None) -> torch.Tensor | None:
        """The loss accumulated since the last call (None: none), weighted as the memory sees fit.
        `row_losses` (B,), each batch row's task loss, lets a memory learn from how its choices did."""


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
