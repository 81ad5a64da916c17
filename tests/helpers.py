"""Shared test helpers."""

from __future__ import annotations

import hashlib
import re

import numpy as np
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


# --- facts without a language model ----------------------------------------------------------------
WORDS_DIM = 1024


def words_embed(texts: list[str]) -> np.ndarray:
    """A deterministic bag-of-words embedding: texts sharing words are similar; no model needed."""
    vectors = np.zeros((len(texts), WORDS_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % WORDS_DIM] += 1.0
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-6)


def text_embed(texts: list[str]) -> np.ndarray:
    """A random unit vector per distinct text (seeded by its hash): unrelated texts are never duplicates."""
    vectors = [np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(WORDS_DIM)
               for t in texts]
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def words_bank(clock=None, measure=None, store=None, **config):
    """A `FactBank` over a store (default: SQLite in memory) with the bag-of-words embedding."""
    from memlm.facts import FactBank, FactBankConfig
    from memlm.facts.backends import open_fact_store

    store = open_fact_store(store, WORDS_DIM, "words", clock=clock or Clock())
    return FactBank(FactBankConfig(**config), store, words_embed, measure=measure)


def words_memory(path=None, **config):
    """A `FactMemory` with the bag-of-words embedding."""
    from memlm.facts import FactBankConfig, FactMemory

    return FactMemory(path, config=FactBankConfig(**config), embed=words_embed, encoder="words", dimension=WORDS_DIM)


def train_key_recall(memories, steps: int = 150, seed: int = 0) -> float:
    """Train a tiny llama with `memories` on key recall across segments and return the final
    cross-entropy on fresh data. A key token (one of 10) appears in segment 1; the last position of
    segment 2, which carries no information about it, must predict it: without memory the best
    possible loss is ln(10)."""
    from tiny import tiny_model

    import memlm

    torch.manual_seed(seed)
    model = memlm.attach(tiny_model("llama", hidden_size=64), memories)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    keys = torch.arange(100, 110)

    def batch(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = keys[torch.randint(0, 10, (size,))]
        segment1 = torch.randint(0, 90, (size, 8))
        segment1[:, 0] = key
        segment2 = torch.full((size, 4), 200)  # carries no information about the key
        return segment1, segment2, key

    def loss_of(segment1, segment2, key) -> torch.Tensor:
        model.reset()
        model.write(segment1)
        output = model(segment2, write_memory=False)
        return torch.nn.functional.cross_entropy(output.logits[:, -1], key)

    for _ in range(steps):
        loss = loss_of(*batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return loss_of(*batch(256)).item()
