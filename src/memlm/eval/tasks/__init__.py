"""Evaluation tasks, one family per module, each an `EvalTask` (see `base`).

The families the harness knows are the table below; a module is imported when its family is first
used. Adding a task family is one module here plus one line in `TASK_FAMILIES`.
"""

from __future__ import annotations

import importlib

from memlm.errors import ConfigError
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun

TASK_FAMILIES: dict[str, str] = {
    "babilong": "memlm.eval.tasks.babilong:BabilongTask",
    "babilong-unseen": "memlm.eval.tasks.babilong:UnseenCastTask",
    "needle": "memlm.eval.tasks.needle:NeedleTask",
    "followup": "memlm.eval.tasks.followup:FollowupTask",
    "recall": "memlm.eval.tasks.recall:RecallTask",
    "ppl": "memlm.eval.tasks.perplexity:PerplexityTask",
    "continual": "memlm.eval.tasks.continual:ContinualTask",
    "generation": "memlm.eval.tasks.generation:GenerationTask",
}


def get_task(family: str) -> EvalTask:
    """The task family `family`, ready to run."""
    if family not in TASK_FAMILIES:
        raise ConfigError(f"unknown task family {family!r}; choose from {sorted(TASK_FAMILIES)}")
    module, name = TASK_FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name)()


__all__ = ["TASK_FAMILIES", "EvalTask", "PairResult", "TaskRun", "get_task"]
