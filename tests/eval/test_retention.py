"""Forgetting measured: the retention curve of a fact bank under capacity."""

from __future__ import annotations

from helpers import WORDS_DIM, words_embed

from memlm.eval.retention import retention_curve
from memlm.facts import FactBankConfig


def test_retention_curve_shows_old_facts_forgotten_under_capacity():
    pairs = [(f"fact number {i} about item{i}", f"item{i}") for i in range(40)]
    unbounded = retention_curve(FactBankConfig(), words_embed, WORDS_DIM, pairs, bins=4)
    bounded = retention_curve(FactBankConfig(capacity=10), words_embed, WORDS_DIM, pairs, bins=4)
    assert [b["recall"] for b in unbounded] == [1.0, 1.0, 1.0, 1.0]
    assert bounded[0]["recall"] == 1.0 and bounded[-1]["recall"] == 0.0  # newest kept, oldest evicted
    assert bounded[0]["age"] < bounded[-1]["age"]
