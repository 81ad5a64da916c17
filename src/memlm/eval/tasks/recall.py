"""`recall/multi-session`: users state facts across many chat sessions (`memlm.data.multisession`),
then ask about them in a new session; recall = the answer appears in the reply; clean = it does, the
reply speaks to the user and recites none of the user's other facts (`memlm.eval.scoring.clean_reply`)."""

from __future__ import annotations

from typing import Any

from memlm.data import multisession
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun


class RecallTask(EvalTask):
    family = "recall"
    settings = ("recall_", "answer_tokens")

    def answer_tokens(self, suite: Any) -> int:
        return suite.answer_tokens
    default_task = "recall/multi-session"

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        from memlm.eval.recall import recall_rows

        suite = run.suite
        users = multisession.generate(suite.recall_users, suite.recall_sessions, suite.recall_filler_turns, suite.seed)
        details = recall_rows(contender, users, questions=suite.recall_questions)
        count = max(1, len(details))
        return PairResult([{"length": None, "metric": metric, "value": sum(d[key] for d in details) / count,
                            "n": len(details), "higher_is_better": True}
                           for metric, key in (("recall", "recalled"), ("clean", "clean"))], details)
