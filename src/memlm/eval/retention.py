"""Forgetting, measured: recall of facts by age under a fact bank's capacity, eviction and decay.

Example:
    >>> curve = retention_curve(FactBankConfig(capacity=100), embed, dimension=384, pairs=pairs)
    >>> curve[0]  # the newest facts
    {'age': 1800.0, 'recall': 1.0}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from memlm.facts.bank import FactBank, FactBankConfig
from memlm.facts.store import FactStore

USER = "retention"


class SimulatedClock:
    """A clock that only moves when told to (time in seconds since an arbitrary start)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def retention_curve(config: FactBankConfig, embed: Callable[[list[str]], np.ndarray], dimension: int,
                    pairs: list[tuple[str, str]], spacing: float = 3600.0, k: int = 1, bins: int = 10,
                    encoder: str = "retention") -> list[dict[str, float]]:
    """Recall of facts by age under `config`'s capacity, eviction and decay.

    `pairs` are (fact, query) in the order learned, one every `spacing` simulated seconds, into a
    fresh in-memory bank; afterwards each query is asked once. Returns one entry per age bin, newest
    first: {"age": mean age in seconds, "recall": share of the facts found in the top `k`}.
    """
    clock = SimulatedClock()
    store = FactStore(None, dimension, encoder, clock=clock)
    config = FactBankConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(FactBankConfig)})
    bank = FactBank(dataclasses.replace(config, user=USER), store, embed)
    try:
        for fact, _ in pairs:
            clock.now += spacing
            bank.learn(fact, importance=1.0)
        found = []
        for position, (fact, query) in enumerate(pairs):
            hits = bank.retrieve(query, k, min_similarity=-1.0, touch=False) if store.has_user(USER) else []
            found.append((clock.now - (position + 1) * spacing, any(r.fact.text == fact for r in hits)))
    finally:
        store.close()
    found.reverse()  # newest first
    size = max(1, math.ceil(len(found) / bins))
    return [{"age": float(np.mean([a for a, _ in found[i:i + size]])),
             "recall": float(np.mean([hit for _, hit in found[i:i + size]]))}
            for i in range(0, len(found), size)]
