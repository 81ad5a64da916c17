"""The logits side of a batched row (memlm.server.batching): its processors in `generate`'s order, split
into what runs per row and what runs for all rows at once, its fixed biases as dense rows, its random
stream for sampling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from memlm.fusion import FactTokenBias
from memlm.server.generation import LogitBias, OpenAIPenalties

if TYPE_CHECKING:
    from memlm.server.engine import ChatJob


def row_processors(config: GenerationConfig, job: ChatJob, fusion: list[Any]) -> tuple[list, list, list]:
    """The row's logits processors after the repetition penalty, in `generate`'s order (its own, the
    caller's, then sampling's): (those that read the row's tokens, fixed additive biases, warpers). If a
    fusion processor is not a fixed bias, the biases all run in the first group, in order."""
    middle: list[Any] = []
    if job.presence_penalty or job.frequency_penalty:
        middle.append(OpenAIPenalties(job.presence_penalty, job.frequency_penalty))
    biases: list[Any] = [LogitBias(job.logit_bias)] if job.logit_bias else []
    biases.extend(fusion)
    if not all(isinstance(bias, LogitBias | FactTokenBias) for bias in biases):
        middle, biases = middle + biases, []
    warpers: list[Any] = []
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p))
    return middle, biases, warpers


def dense_bias(bias: Any, vocab: int, like: torch.Tensor) -> torch.Tensor:
    """A fixed additive bias as a (1, V) row: adding it gives what the processor gives (its zeros add
    exactly nothing)."""
    if isinstance(bias, FactTokenBias):
        return bias.bonus(1, vocab, like.device, like.dtype)
    return bias(None, like.new_zeros(1, vocab))  # LogitBias: its values at its ids


def row_generator(config: GenerationConfig, job: ChatJob, device: torch.device) -> torch.Generator | None:
    """A sampling row's random stream: seeded by the request's `seed`, else at random (a batch has no one
    global seed to set, so sampled rows do not repeat the one-at-a-time path's draws)."""
    if not config.do_sample:
        return None
    generator = torch.Generator(device=device)
    if job.seed is not None:
        generator.manual_seed(job.seed)
    else:
        generator.seed()
    return generator
