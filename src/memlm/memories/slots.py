"""`slots`: LM2-style internal memory, a bank of memory slots per decoder layer (Kang et al., 2025).

Each chosen layer keeps `memory_slots` slots of the model's width per batch row, `M` (B, N, C),
initialised as the identity: slot i = e_i (zero-padded where the width exceeds N).

* **Read** (every forward pass, decode steps included): the hidden states entering the layer's
  self-attention attend over the slots with `num_mem_heads` heads; the read-out is added to the
  attention's output through an output gate that starts at zero, so an untrained memory leaves the
  backbone's output unchanged.
* **Write** (once per segment, never per decode step): the slots attend over the segment's hidden
  states (padding masked) to form candidates `E`; per-slot input and forget gates from `E` update
  the memory, as in LM2: `M' = input_gate * tanh(E) + forget_gate * M`.

Attention runs in a small space (`mem_dim` per layer, split over the heads), so a layer's memory
costs a few hundred thousand parameters, not the millions a full-width block would.

State is carried across segments and calls (`mode="persistent"`) or cleared at each call
(`"ephemeral"`); `reset_per_sequence` clears it at each `generate()`/`memorize()` call as well. The
slot contents are part of the saved state and can be inspected (`summary()`, `memlm inspect`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memlm.config import MemoryConfig
from memlm.errors import ConfigError, IncompatibleMemoryError
from memlm.hooks import BackboneLayout, find_attention_module
from memlm.memories.base import Inspectable, Memory, MemoryContext, StaticDecode


@dataclass
class SlotsConfig(MemoryConfig):
    """Config of the `slots` memory (LM2's names).

    Args:
        memory_slots: slots per layer (N).
        num_mem_heads: attention heads of the memory's read and write.
        layers: layers with a memory: a list of indices, "all", or None for four layers spread
            evenly through the depth.
        mem_dim: width of the memory's attention space (split over the heads).
        forget_bias: initial bias of the forget gate (sigmoid(2) = 0.88: slots keep most of what
            they hold until training says otherwise).
        reset_per_sequence: clear the slots at the start of every generate()/memorize() call.
    """

    mechanism: ClassVar[str] = "slots"

    memory_slots: int = 16
    num_mem_heads: int = 4
    layers: list[int] | str | None = None
    mem_dim: int = 128
    forget_bias: float = 2.0
    reset_per_sequence: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("memory_slots", "num_mem_heads", "mem_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"slots: {name} must be a positive integer, got {value!r}")
        if self.mem_dim % self.num_mem_heads:
            raise ConfigError(f"slots: mem_dim ({self.mem_dim}) must be divisible by num_mem_heads "
                              f"({self.num_mem_heads})")
        if not (self.layers is None or self.layers == "all" or
                (isinstance(self.layers, (list, tuple)) and self.layers and
                 all(isinstance(layer, int) and not isinstance(layer, bool) for layer in self.layers))):
            raise ConfigError(f"slots: layers must be a non-empty list of integers, 'all' or None, got {self.layers!r}")
        if not isinstance(self.forget_bias, (int, float)) or not math.isfinite(self.forget_bias):
            raise ConfigError(f"slots: forget_bias must be a finite number, got {self.forget_bias!r}")


def identity_slots(slots: int, width: int) -> torch.Tensor:
    """(N, C): slot i = e_i, zero where the width exceeds N (and only the first C slots when N > C)."""
    memory = torch.zeros(slots, width)
    count = min(slots, width)
    memory[torch.arange(count), torch.arange(count)] = 1.0
    return memory


class LayerMemory(nn.Module):
    """One layer's slots: read by the layer's hidden states, written from a segment."""

    def __init__(self, width: int, config: SlotsConfig):
        super().__init__()
        self.heads, self.dim = config.num_mem_heads, config.mem_dim
        self.read_query = nn.Linear(width, self.dim, bias=False)
        self.slot_key_value = nn.Linear(width, 2 * self.dim, bias=False)
        self.read_out = nn.Linear(self.dim, width, bias=False)
        self.output_gate = nn.Parameter(torch.zeros(width))  # zero: untrained = the backbone
        self.write_query = nn.Linear(width, self.dim, bias=False)
        self.token_key_value = nn.Linear(width, 2 * self.dim, bias=False)
        self.write_out = nn.Linear(self.dim, width, bias=False)
        self.gates = nn.Linear(width, 2)  # per slot: input gate, forget gate
        with torch.no_grad():
            self.gates.bias.copy_(torch.tensor([0.0, config.forget_bias]))

    def _split(self, states: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (B, H, S, D/H)
        batch, length, _ = states.shape
        return states.view(batch, length, self.heads, self.dim // self.heads).transpose(1, 2)

    def read(self, hidden_states: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The gated read-out to add to the attention output: (B, T, C)."""
        query = self._split(self.read_query(hidden_states))  # (B, H, T, d)
        key, value = self.slot_key_value(memory.to(hidden_states.dtype)).chunk(2, dim=-1)
        read = nn.functional.scaled_dot_product_attention(query, self._split(key), self._split(value))  # (B,H,T,d)
        read = read.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[1], self.dim)
        return self.output_gate * self.read_out(read)

    def write(self, memory: torch.Tensor, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
              ) -> torch.Tensor:
        """The memory after reading one segment: (B, N, C)."""
        dtype = memory.dtype
        hidden_states = hidden_states.to(dtype)
        query = self._split(self.write_query(memory))  # (B, H, N, d)
        key, value = self.token_key_value(hidden_states).chunk(2, dim=-1)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): padding is not read
        candidates = nn.functional.scaled_dot_product_attention(query, self._split(key), self._split(value),
                                                                attn_mask=mask)  # (B, H, N, d)
        candidates = self.write_out(candidates.transpose(1, 2).reshape(memory.shape[0], memory.shape[1], self.dim))
        input_gate, forget_gate = torch.sigmoid(self.gates(candidates)).unbind(-1)  # (B, N) each
        updated = input_gate.unsqueeze(-1) * torch.tanh(candidates) + forget_gate.unsqueeze(-1) * memory
        if attention_mask is not None:  # rows whose segment was all padding keep their memory
            updated = torch.where(attention_mask.bool().any(-1)[:, None, None], updated, memory)
        return updated


class SlotsMemory(Memory, Inspectable, StaticDecode):
    """LM2-style memory slots per layer: read by cross-attention through a zero output gate, written
    once per segment through input and forget gates."""

    config_class = SlotsConfig
    config: SlotsConfig
    decode_state_names = ("memory",)  # the slots of every chosen layer, replaced by each write

    def __init__(self, config: SlotsConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        if config.layers is None:
            count = min(4, layout.num_layers)
            self.layers = sorted({(2 * i + 1) * layout.num_layers // (2 * count) for i in range(count)})
        elif config.layers == "all":
            self.layers = list(range(layout.num_layers))
        else:
            self.layers = sorted({layout.resolve_layer(layer) for layer in config.layers})
        self.width = layout.hidden_size
        self.layer_memories = nn.ModuleDict({str(layer): LayerMemory(self.width, config) for layer in self.layers})
        self.register_buffer("initial", identity_slots(config.memory_slots, self.width), persistent=False)
        self.memory: torch.Tensor | None = None  # (B, L, N, C): slots of every chosen layer; None until a write
        self.updates = 0

    def needs_training(self) -> bool:
        return True

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        for index, layer in enumerate(self.layers):
            attention = find_attention_module(layout.layers[layer])
            self.track(attention.register_forward_hook(self._hook(index, layer), with_kwargs=True))

    def _hook(self, index: int, layer: int) -> Any:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, T, C)
            self.capture(f"hidden/{index}", hidden_states)
            memory = self._memory_for(hidden_states.shape[0], hidden_states)[:, index]  # (B, N, C)
            read = self.layer_memories[str(layer)].read(hidden_states, memory)
            if isinstance(output, tuple):
                return (output[0] + read.to(output[0].dtype), *output[1:])
            return output + read.to(output.dtype)
        return hook

    def _memory_for(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """The slots each row of this batch reads (beams repeat each stored row): (B, L, N, C)."""
        if self.memory is None:
            initial = self.initial.to(device=like.device, dtype=self.gates_dtype)
            return initial.expand(batch_size, len(self.layers), -1, -1)
        return self.expand_rows(self.memory, batch_size)

    @property
    def gates_dtype(self) -> torch.dtype:
        return next(self.layer_memories.parameters()).dtype

    # --- writing -----------------------------------------------------------------------------
    def write(self) -> None:
        captured = self.captured_under("hidden/")
        if len(captured) != len(self.layers):
            return
        batch_size = captured["0"].shape[0]
        if self.memory is not None:
            self.check_batch(self.memory.shape[0], batch_size)
        memory = self._memory_for(batch_size, captured["0"])
        updated = [self.layer_memories[str(layer)].write(memory[:, index], captured[str(index)],
                                                         self.context.attention_mask)
                   for index, layer in enumerate(self.layers)]
        self.memory = torch.stack(updated, dim=1)
        self.updates += 1

    # --- state -------------------------------------------------------------------------------
    def begin_call(self) -> None:
        super().begin_call()
        if self.config.reset_per_sequence:
            self.reset()

    def reset(self, batch_size: int | None = None) -> None:
        self.updates = 0
        self.memory = None
        if batch_size is not None:
            initial = self.initial.to(dtype=self.gates_dtype)
            self.memory = initial.expand(batch_size, len(self.layers), -1, -1).clone()

    def detach_state(self) -> None:
        if self.memory is not None:
            self.memory = self.memory.detach()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        memory = self.memory.detach() if self.memory is not None else self.initial.new_zeros(
            0, len(self.layers), self.config.memory_slots, self.width)
        return {"memory": memory, "updates": torch.tensor([self.updates], dtype=torch.int64)}

    def check_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().check_state_tensors(tensors)
        expected = (len(self.layers), self.config.memory_slots, self.width)
        if tensors["memory"].dim() != 4 or tuple(tensors["memory"].shape[1:]) != expected:
            raise IncompatibleMemoryError(
                f"slots: saved memory has shape {tuple(tensors['memory'].shape)}, expected (rows, *{expected}): "
                f"it was saved with other layers, slot count or width")

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        memory = tensors["memory"].to(device=self.initial.device, dtype=self.gates_dtype)
        self.memory = memory if memory.shape[0] else None
        self.updates = int(tensors["updates"][0])

    # --- inspection --------------------------------------------------------------------------
    def slot_activity(self) -> torch.Tensor:
        """How far each slot has moved from its initial value, per layer: (L, N), mean over rows."""
        if self.memory is None:
            return torch.zeros(len(self.layers), self.config.memory_slots)
        moved = (self.memory.detach().float() - self.initial.float()).norm(dim=-1)  # (B, L, N)
        return moved.mean(dim=0).cpu()

    def activity(self) -> dict[str, Any]:
        """How far each slot of each layer has moved from its initial value: (layers, slots)."""
        return {"slot_change": self.slot_activity(), "layers": list(self.layers)}

    def summary(self) -> dict[str, Any]:
        activity = self.slot_activity()
        return {"updates": self.updates, "rows": 0 if self.memory is None else int(self.memory.shape[0]),
                "layers": self.layers, "memory_slots": self.config.memory_slots,
                "slot_change": round(float(activity.mean()), 4), "mode": self.config.mode}
