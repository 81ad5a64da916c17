"""`babilong/qa1` ... `babilong/qa5`: bAbI facts hidden in long haystacks (`memlm.data.babilong`),
asked at each length; accuracy by BABILong's rule (the answer in the first sentence of the reply)."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from memlm.data import babilong
from memlm.eval import scoring
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun


class BabilongTask(EvalTask):
    family = "babilong"
    settings = ("babilong_tasks", "lengths", "long_", "samples")

    def task_names(self, suite: Any) -> list[str]:
        return [f"babilong/{name}" for name in suite.babilong_tasks]

    @staticmethod
    def samples(run: TaskRun, name: str, length: int) -> list[babilong.Sample]:
        # Every contender answers the same samples; building a 16K+ haystack is worth doing once.
        key = ("babilong", name, length)
        if key not in run.shared:
            run.shared[key] = babilong.generate(name, run.suite.samples, length, run.suite.seed, run.count_tokens)
        return run.shared[key]

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        name = task.split("/")[1]
        records, details = [], []
        for length in run.suite.lengths_for(name):
            # Each length is cached on its own as well: a long run stopped at 128K resumes there.
            cached = run.load_partial(task, contender.name, length)
            if cached is not None:
                records += cached["records"]
                details += cached["details"]
                continue
            started = time.perf_counter()
            correct, answered, new_details = 0, 0, []
            for sample in self.samples(run, name, length):
                contender.reset()
                contender.feed(sample.context)
                reply = contender.ask(babilong.question_prompt(sample), query=sample.question)
                if reply is None:  # does not fit `full`'s window
                    continue
                hit = scoring.babilong_correct(reply, sample.answer, babilong.LABELS[name], sample.question)
                correct, answered = correct + hit, answered + 1
                new_details.append({"length": length, "question": sample.question, "answer": sample.answer,
                                    "reply": reply, "correct": hit})
            new_records = [{"length": length, "metric": "accuracy", "value": correct / answered, "n": answered,
                            "higher_is_better": True}] if answered else []
            run.save_partial(task, contender.name, length, new_records, new_details)
            records += new_records
            details += new_details
            if run.progress and length >= 16384:
                tqdm.write(f"{task} x {contender.name} at {length} tokens: {correct}/{answered} correct "
                           f"({time.perf_counter() - started:.0f} s)")
        return PairResult(records, details)
