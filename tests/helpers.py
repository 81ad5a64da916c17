"""Shared test helpers."""

from __future__ import annotations

import torch
from torch import nn


def token_batch(batch_size: int = 2, length: int = 12, seed: int = 0, vocab: int = 250) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, length), generator=generator)


@torch.no_grad()
def randomize_memory_weights(memory_model, seed: int = 0, scale: float = 0.5) -> None:
    """Give every memory parameter (gates included) non-zero random values, as training would,
    so the memory really changes the backbone's output."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in memory_model.memory_parameters():
        noise = torch.randn(parameter.shape, generator=generator) * scale
        parameter.copy_(noise.to(parameter.dtype))


def hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def logits(model, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits
