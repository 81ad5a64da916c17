"""The skeleton of a new memory mechanism: copy this file, rename, fill in.

It is a complete, working mechanism (an exponential moving average of each segment's mean hidden
state, read into the last layer through a zero-initialised gate), kept small so that every method
a mechanism implements is visible in one screen. It is not registered: to make a copy available,
add one line to `memlm.registry.BUILTIN_MECHANISMS` (inside memlm) or call
`memlm.register_memory(TemplateMemory)` (outside). The contract tests then run it on every tiny
backbone (untrained = backbone, cached generate = uncached, rows independent, save/load, detach).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memlm.config import MemoryConfig, check_range
from memlm.errors import IncompatibleMemoryError
from memlm.hooks import BackboneLayout, add_capture_hook, add_output_hook
from memlm.memories.base import Memory, MemoryContext, masked_mean


@dataclass
class TemplateConfig(MemoryConfig):
    """Config of the `template` memory (each field documented here, validated in `validate`).

    Args:
        momentum: weight of the old state in the moving average, in [0, 1).
    """

    mechanism: ClassVar[str] = "template"
    momentum: float = 0.9

    def validate(self) -> None:
        super().validate()
        check_range("momentum", self.momentum, 0.0, 1.0, high_open=True, mechanism=self.mechanism)


class TemplateMemory(Memory):
    """A moving average of segment states, read into the last layer through a zero gate."""

    config_class = TemplateConfig
    config: TemplateConfig

    def __init__(self, config: TemplateConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        self.gate = nn.Parameter(torch.zeros(layout.hidden_size))  # zero: untrained = the backbone
        self.state: torch.Tensor | None = None  # (B, C), None until the first write

    # Hooks: read on every forward (decode steps too); capture what `write()` needs.
    def attach(self, layout: BackboneLayout) -> None:
        self.track(add_output_hook(layout.layers[-1], self._read))
        self.track(add_capture_hook(layout.layers[-1], lambda hidden: self.capture("hidden", hidden)))

    def _read(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        if self.state is None:
            return hidden_states
        state = self.expand_rows(self.state, hidden_states.shape[0])  # beams repeat each row
        return hidden_states + (self.gate * state).unsqueeze(1).to(hidden_states.dtype)

    # Write: once per segment or turn, from what the hooks captured.
    def write(self) -> None:
        hidden_states = self.captured("hidden")
        if hidden_states is None:
            return
        pooled, _ = masked_mean(hidden_states, self.context.attention_mask)  # (B, C)
        if self.state is None:
            self.state = pooled
            return
        self.check_batch(self.state.shape[0], pooled.shape[0])
        self.state = self.config.momentum * self.state + (1 - self.config.momentum) * pooled

    # State: what it remembers (not its weights), as tensors.
    def reset(self, batch_size: int | None = None) -> None:
        self.state = None

    def detach_state(self) -> None:
        if self.state is not None:
            self.state = self.state.detach()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"state": self.state.detach() if self.state is not None else torch.zeros(0, self.gate.shape[0])}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().check_state_tensors(tensors)  # the same entries
        if tensors["state"].dim() != 2 or tensors["state"].shape[1] != self.gate.shape[0]:
            raise IncompatibleMemoryError(f"template: saved state has shape {tuple(tensors['state'].shape)}")

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        state = tensors["state"].to(self.gate.device, self.gate.dtype)
        self.state = state if state.shape[0] else None

    def summary(self) -> dict[str, Any]:
        return {"rows": 0 if self.state is None else int(self.state.shape[0]), "momentum": self.config.momentum}
