"""`continual/facts`: made-up facts learned one by one (`memlm.data.continual_facts`), then asked with
paraphrased questions; recall, also by how many facts were learned after the one asked about."""

from __future__ import annotations

from typing import Any

from memlm.data import continual_facts
from memlm.eval import scoring
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun


class ContinualTask(EvalTask):
    family = "continual"
    settings = ("facts", "fact_questions", "answer_tokens")

    def answer_tokens(self, suite: Any) -> int:
        return suite.answer_tokens
    default_task = "continual/facts"

    def identity(self, contender: Any, suite: Any) -> dict[str, Any]:
        # Memories that learn from text store each fact as a fact rather than the stream's segments.
        return {"facts": "learned one by one"} if contender.learns_text else {}

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        items = continual_facts.generate(run.suite.facts, run.suite.seed)
        step = max(1, len(items) // run.suite.fact_questions)
        asked = items[step - 1::step][:run.suite.fact_questions]
        contender.reset()
        for item in items:
            contender.learn(item.fact)
        details = []
        for item in asked:
            reply = contender.ask(f"{item.question} Answer briefly.", query=item.question)
            if reply is None:
                return PairResult([], [{"skipped": "the facts do not fit the native window"}])
            details.append({"index": item.index, "since": len(items) - 1 - item.index, "question": item.question,
                            "answer": item.answer, "reply": reply, "recalled": scoring.contains(reply, item.answer)})
        records = [{"length": None, "metric": "recall", "value": sum(d["recalled"] for d in details) / len(details),
                    "n": len(details), "higher_is_better": True}]
        # Recall by how many facts came after the one asked about (in four bins): the forgetting curve.
        bins = max(1, len(details) // 4)
        ordered = sorted(details, key=lambda d: d["since"])
        for start in range(0, len(ordered), bins):
            chunk = ordered[start:start + bins]
            records.append({"task": "continual/by-age", "length": int(chunk[-1]["since"]), "metric": "recall",
                            "value": sum(d["recalled"] for d in chunk) / len(chunk), "n": len(chunk),
                            "higher_is_better": True})
        return PairResult(records, details)
