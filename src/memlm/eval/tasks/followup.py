"""`followup/qa`: one long context, then three questions, each following up on the answer before it
("Where is Mary?" -> "Where was she before that?" -> "Who else went there?"). Every reply stays in
the conversation; accuracy is reported per turn and length (records `followup/turn-1` ... `-3`)."""

from __future__ import annotations

from typing import Any

from memlm.data import babilong
from memlm.eval import scoring
from memlm.eval.tasks.babilong import BabilongTask, accuracy_record, generate_in_parallel
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun

TURN_LABELS = (babilong.LOCATIONS, babilong.LOCATIONS, babilong.PEOPLE)


class FollowupTask(EvalTask):
    family = "followup"
    settings = ("followup_", "babilong_haystack")
    default_task = "followup/qa"

    def identity(self, contender: Any, suite: Any) -> dict[str, Any]:
        return BabilongTask().identity(contender, suite)

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        records, details = [], []
        for length in run.suite.followup_lengths:
            cached = run.load_partial(task, contender.name, length)
            if cached is not None:
                records += cached["records"]
                details += cached["details"]
                continue
            key = ("followup", length)
            if key not in run.shared:
                run.shared[key] = generate_in_parallel(babilong.generate_followup, None, run.suite.followup_samples,
                                                       length, run)
            samples = run.shared[key]
            new_details = []
            for first in range(0, len(samples), run.suite.batch_size):
                batch = samples[first:first + run.suite.batch_size]
                replies = contender.answer_batch([s.context for s in batch],
                                                 [babilong.followup_questions(s) for s in batch],
                                                 [s.questions[0] for s in batch])
                for sample, turns in zip(batch, replies, strict=True):
                    if turns is None:
                        continue
                    hits = [scoring.babilong_correct(reply, answer, labels, question)
                            for reply, answer, labels, question in zip(turns, sample.answers, TURN_LABELS,
                                                                        sample.questions, strict=True)]
                    new_details.append({"length": length, "questions": list(sample.questions),
                                        "answers": list(sample.answers), "replies": turns, "correct": hits})
            new_records = []
            for turn in range(3):
                if new_details:
                    correct = sum(detail["correct"][turn] for detail in new_details)
                    new_records.append({**accuracy_record(length, correct, len(new_details)),
                                        "task": f"followup/turn-{turn + 1}"})
            run.save_partial(task, contender.name, length, new_records, new_details)
            records += new_records
            details += new_details
        return PairResult(records, details)
