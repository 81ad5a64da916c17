"""`recurrent`: a GRU memory state with decay, read into the residual stream through zero gates.

Each batch row has a state vector `m` (memory_size). Once per segment or turn it is updated from the
mean of that segment's final hidden states::

    m <- decay * GRUCell(mean_t h_t, m)

A GRU output is a convex mix of the old state and a tanh candidate, so |m| stays bounded by 1 and
the `decay` factor makes old traces fade geometrically instead of lingering forever.

On every forward pass (decode steps included) the state is read into the residual stream at up to
three points — the input of the first decoder layer, the output of a middle layer and the output of
the top layer — each as `h + g * W m` with its own projection `W` and a per-channel gate `g` that
starts at zero. Untrained, the memory therefore leaves the backbone's output exactly unchanged;
training opens the gates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memlm.config import MemoryConfig, check_range
from memlm.errors import ConfigError, IncompatibleMemoryError
from memlm.hooks import BackboneLayout, add_capture_hook, add_input_hook, add_output_hook
from memlm.memories.base import Inspectable, Memory, MemoryContext, StaticDecode, masked_mean

READ_POINTS = ("input", "middle", "top")


@dataclass
class RecurrentConfig(MemoryConfig):
    """Config of the `recurrent` memory.

    Args:
        memory_size: width of the GRU state.
        decay: factor applied to the state at each update, in (0, 1]; 1 means no decay.
        inject_input: read the state into the input of the first decoder layer.
        inject_middle: read the state into the output of `middle_layer`.
        inject_top: read the state into the output of the last decoder layer.
        middle_layer: index of the middle layer (default: num_layers // 2).
        history_size: how many state norms to keep for `state_norm_history`.
    """

    mechanism: ClassVar[str] = "recurrent"
    memory_size: int = 256
    decay: float = 0.95
    inject_input: bool = True
    inject_middle: bool = True
    inject_top: bool = True
    middle_layer: int | None = None
    history_size: int = 10_000

    def validate(self) -> None:
        super().validate()
        check_range("decay", self.decay, 0.0, 1.0, low_open=True, mechanism="recurrent")
        if not isinstance(self.memory_size, int) or self.memory_size < 1:
            raise ConfigError(f"recurrent: memory_size must be a positive integer, got {self.memory_size!r}")
        if not (self.inject_input or self.inject_middle or self.inject_top):
            raise ConfigError("recurrent: enable at least one of inject_input/inject_middle/inject_top")
        if not isinstance(self.history_size, int) or self.history_size < 1:
            raise ConfigError(f"recurrent: history_size must be a positive integer, got {self.history_size!r}")

    @property
    def read_points(self) -> tuple[str, ...]:
        enabled = (self.inject_input, self.inject_middle, self.inject_top)
        return tuple(point for point, on in zip(READ_POINTS, enabled, strict=True) if on)


class GatedReadout(nn.Module):
    """Adds `gate * proj(state)` to every position; the gate starts at zero."""

    def __init__(self, memory_size: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(memory_size, hidden_size, bias=False)
        self.gate = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, hidden_states: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        read = self.gate * self.proj(state)  # (B, C)
        return hidden_states + read.unsqueeze(1).to(hidden_states.dtype)  # (B, T, C)


class RecurrentMemory(Memory, Inspectable, StaticDecode):
    """GRU memory state with decay, updated once per segment/turn, read at input/middle/top."""

    config_class = RecurrentConfig
    config: RecurrentConfig
    decode_state_names = ("state",)  # the only tensor a decode step reads that writes replace

    def __init__(self, config: RecurrentConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        middle = layout.num_layers // 2 if config.middle_layer is None else config.middle_layer
        self.middle_layer = layout.resolve_layer(middle)
        self.gru = nn.GRUCell(layout.hidden_size, config.memory_size)
        self.readouts = nn.ModuleDict(
            {point: GatedReadout(config.memory_size, layout.hidden_size) for point in config.read_points}
        )
        self.state: torch.Tensor | None = None  # (B, memory_size); None until the first write
        self.updates = 0
        self.norm_history: deque[float] = deque(maxlen=config.history_size)

    def needs_training(self) -> bool:
        return True

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        if "input" in self.readouts:
            self.track(add_input_hook(layout.layers[0], lambda h: self._read("input", h)))
        if "middle" in self.readouts:
            self.track(add_output_hook(layout.layers[self.middle_layer], lambda h: self._read("middle", h)))
        if "top" in self.readouts:
            self.track(add_output_hook(layout.layers[-1], lambda h: self._read("top", h)))
        # Writes summarise the final (normed) hidden states: the features the LM head reads.
        self.track(add_capture_hook(layout.final_norm or layout.layers[-1], lambda h: self.capture("hidden", h)))

    def _read(self, point: str, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.state is None:  # nothing remembered yet: a zero state reads as exactly zero
            return hidden_states
        return self.readouts[point](hidden_states, self.expand_rows(self.state, hidden_states.shape[0]))

    # --- state -------------------------------------------------------------------------------
    def reset(self, batch_size: int | None = None) -> None:
        self.updates = 0
        self.norm_history.clear()
        self.state = None if batch_size is None else self._zeros(batch_size)

    def _zeros(self, batch_size: int) -> torch.Tensor:
        weight = self.gru.weight_hh
        return torch.zeros(batch_size, self.config.memory_size, device=weight.device, dtype=weight.dtype)

    def write(self) -> None:
        hidden_states = self.captured("hidden")
        if hidden_states is None:
            return
        pooled, has_tokens = masked_mean(hidden_states, self.context.attention_mask)  # (B, C), (B,)
        batch_size = pooled.shape[0]
        previous = self._zeros(batch_size) if self.state is None else self.state
        self.check_batch(previous.shape[0], batch_size)
        updated = self.config.decay * self.gru(pooled.to(previous.dtype), previous)  # (B, M)
        # Rows whose segment was all padding keep their state untouched.
        self.state = torch.where(has_tokens.unsqueeze(-1), updated, previous)
        self.updates += 1
        self.norm_history.append(float(self.state.detach().float().norm(dim=-1).mean()))

    def detach_state(self) -> None:
        if self.state is not None:
            self.state = self.state.detach()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = self.state if self.state is not None else self._zeros(0)
        return {
            "state": state.detach(),
            "updates": torch.tensor([self.updates], dtype=torch.int64),
            "norm_history": torch.tensor(list(self.norm_history), dtype=torch.float32),
        }

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().check_state_tensors(tensors)
        state = tensors["state"]
        if state.dim() != 2 or state.shape[1] != self.config.memory_size:
            raise IncompatibleMemoryError(
                f"recurrent: saved state has shape {tuple(state.shape)}, expected (rows, "
                f"{self.config.memory_size}); it was saved with another memory_size"
            )

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        state = tensors["state"]
        weight = self.gru.weight_hh
        self.state = state.to(device=weight.device, dtype=weight.dtype) if state.shape[0] else None
        self.updates = int(tensors["updates"][0])
        self.norm_history = deque(tensors["norm_history"].tolist(), maxlen=self.config.history_size)

    # --- inspection --------------------------------------------------------------------------
    @property
    def state_norm_history(self) -> list[float]:
        """Mean L2 norm of the state after each update (oldest first): makes drift visible."""
        return list(self.norm_history)

    def activity(self) -> dict[str, Any]:
        """The state of row 0 after the latest update (the GRU units) and its norm."""
        state = self.state[0].detach().float().cpu() if self.state is not None else torch.zeros(
            self.config.memory_size)
        return {"state": state, "norm": float(state.norm())}

    def summary(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "rows": 0 if self.state is None else int(self.state.shape[0]),
            "state_norm": self.norm_history[-1] if self.norm_history else 0.0,
            "decay": self.config.decay,
            "mode": self.config.mode,
            "read_points": list(self.config.read_points),
        }
