"""`generation/qa`: one fact read, then a paraphrased question answered in a full sentence, scored
against the fact with BLEU, ROUGE and BERTScore."""

from __future__ import annotations

from typing import Any

from memlm.data import continual_facts
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun


class GenerationTask(EvalTask):
    family = "generation"
    settings = ("generation_",)
    default_task = "generation/qa"

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        from memlm.eval.metrics import generation_metrics

        items = continual_facts.generate(run.suite.generation_samples, run.suite.seed + 1)
        hypotheses, details = [], []
        for item in items:
            contender.reset()
            contender.feed(item.fact)
            reply = contender.ask(f"{item.question} Answer in one full sentence.", query=item.question) or ""
            hypotheses.append(reply)
            details.append({"question": item.question, "reference": item.fact, "reply": reply})
        metrics = generation_metrics(hypotheses, [item.fact for item in items])
        records = [{"length": None, "metric": metric, "value": value, "n": len(items), "higher_is_better": True}
                   for metric, value in metrics.items() if metric in ("bleu", "rouge1", "rougeL", "bertscore_f1")]
        return PairResult(records, details)
