"""`recall/multi-session`: users state facts across many chat sessions (`memlm.data.multisession`),
then ask about them in a new session; recall = the answer appears in the reply."""

from __future__ import annotations

from typing import Any

from memlm.data import multisession
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun


class RecallTask(EvalTask):
    family = "recall"
    settings = ("recall_",)
    default_task = "recall/multi-session"

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        from memlm.eval.recall import recall_rows

        suite = run.suite
        users = multisession.generate(suite.recall_users, suite.recall_sessions, suite.recall_filler_turns, suite.seed)
        details = recall_rows(contender, users, questions=suite.recall_questions)
        recall = sum(d["recalled"] for d in details) / max(1, len(details))
        return PairResult([{"length": None, "metric": "recall", "value": recall, "n": len(details),
                            "higher_is_better": True}], details)
