"""Deterministic evaluation task generators (no dataset hub needed): BABILong-style bAbI questions in
long haystacks (`babilong`) and a stream of made-up facts with paraphrased questions (`continual_facts`).

Example:
    >>> from memlm.eval.tasks import continual_facts, generate_babilong
    >>> len(generate_babilong("qa1", n=2, length=0, seed=0, count_tokens=len)), len(continual_facts.generate(5))
    (2, 5)
"""

from __future__ import annotations

from memlm.eval.tasks import babilong, continual_facts
from memlm.eval.tasks.babilong import TASKS, Sample, full_prompt, question_prompt, solve
from memlm.eval.tasks.continual_facts import FactItem

generate_babilong = babilong.generate
generate_facts = continual_facts.generate

__all__ = [
    "TASKS",
    "FactItem",
    "Sample",
    "babilong",
    "continual_facts",
    "full_prompt",
    "generate_babilong",
    "generate_facts",
    "question_prompt",
    "solve",
]
