"""A LoRA adapter on the backbone (through `peft`), attached in place and removed without a trace.

The backbone is never forked or overwritten: peft wraps the chosen linear layers in place (their
original weights untouched and frozen), the adapter's weights are saved with the memories'
(`MemoryModel.save_pretrained`), and `remove()` puts the original layers back and restores which of
the backbone's parameters required gradients.

Example:
    >>> mm.add_lora(LoraSettings(r=8, layers=list(range(8, 30))))   # only above the memory's layer
    >>> mm.trainable_parameters()                                      # memories + adapter
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memlm.errors import ConfigError, IncompatibleMemoryError

ADAPTER_NAME = "memlm"
# The attention and MLP projections of Llama/Qwen2/Gemma-style and GPT-2 blocks.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                   "c_attn", "c_proj", "c_fc")


@dataclass
class LoraSettings:
    """A LoRA adapter's shape.

    Args:
        r: rank of each low-rank update.
        alpha: scale numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input while training.
        target_modules: names of the linear layers that get an adapter (those the backbone has).
        layers: decoder layers that get adapters: "all" or a list of indices.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    layers: list[int] | str = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ConfigError(f"lora: r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"lora: alpha must be positive, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(name, str) for name in self.target_modules):
            raise ConfigError(f"lora: target_modules must be a non-empty list of names, got {self.target_modules!r}")
        if not (self.layers == "all" or (isinstance(self.layers, list) and self.layers and all(
                isinstance(layer, int) and not isinstance(layer, bool) for layer in self.layers))):
            raise ConfigError(f"lora: layers must be 'all' or a non-empty list of integers, got {self.layers!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ConfigError(f"lora: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def carries_lora(backbone: nn.Module) -> bool:
    """Whether `backbone` already has LoRA layers in it (this module's or any peft adapter's)."""
    return any(".lora_" in name for name, _ in backbone.named_parameters())


class BackboneLora:
    """A peft LoRA adapter injected into `backbone` in place; `remove()` takes it out again."""

    def __init__(self, backbone: nn.Module, settings: LoraSettings, num_layers: int):
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        # nn.Linear in most models, transformers' Conv1D in GPT-2: peft adapts both.
        present = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules()
                   if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"}
        targets = sorted(set(settings.target_modules) & present)
        if not targets:
            raise ConfigError(f"lora: none of {settings.target_modules} is a linear layer of this backbone "
                              f"(it has {sorted(present)[:12]})")
        layers = None if settings.layers == "all" else sorted({layer % num_layers for layer in settings.layers})
        self.settings = settings
        self._requires_grad = {name: parameter.requires_grad for name, parameter in backbone.named_parameters()}
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=targets, layers_to_transform=layers)
        self._tuner = LoraModel(backbone, config, ADAPTER_NAME)
        self.backbone = backbone

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, parameter) for name, parameter in self.backbone.named_parameters()
                if ".lora_" in name and f".{ADAPTER_NAME}." in name]

    def parameters(self) -> list[nn.Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach() for name, parameter in self.named_parameters()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: Any = "") -> None:
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise IncompatibleMemoryError(f"LoRA weights in {source} do not match the adapter (missing: "
                                          f"{missing[:3]}, unexpected: {unexpected[:3]})")
        with torch.no_grad():
            for name, tensor in tensors.items():
                if tensor.shape != own[name].shape:
                    raise IncompatibleMemoryError(f"LoRA weight {name} in {source} has shape {tuple(tensor.shape)}, "
                                                  f"expected {tuple(own[name].shape)}")
                own[name].copy_(tensor.to(own[name].dtype))

    def enable(self, enabled: bool) -> None:
        """Switch the adapter's contribution on or off (off: the backbone computes what it would bare)."""
        if enabled:
            self._tuner.enable_adapter_layers()
        else:
            self._tuner.disable_adapter_layers()

    def remove(self) -> None:
        """Put the original layers back and restore which parameters required gradients."""
        self._tuner.unload()
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad_(self._requires_grad.get(name, parameter.requires_grad))
