"""`needle/facts` and `needle/passkey`: free-form facts about invented people and things, or a pass key,
hidden in long haystacks (`memlm.data.needles`) and asked as open questions; a reply is correct when it
holds every word of the answer. Run like BABILong, length by length, `batch_size` samples at a time."""

from __future__ import annotations

from typing import Any

from memlm.data import needles
from memlm.eval.tasks.babilong import BabilongTask


class NeedleTask(BabilongTask):
    family = "needle"
    settings = ("needle_tasks", "babilong_haystack", "lengths", "long_", "samples")
    generate = staticmethod(needles.generate)

    def task_names(self, suite: Any) -> list[str]:
        return [f"{self.family}/{name}" for name in suite.needle_tasks]

    @staticmethod
    def prompt(sample: Any) -> str:
        return needles.question_prompt(sample)

    @staticmethod
    def correct(sample: Any, reply: str) -> bool:
        return needles.answer_correct(reply, sample.answer)
