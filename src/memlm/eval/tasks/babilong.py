"""`babilong/qa1` ... `babilong/qa5`: bAbI facts hidden in long haystacks (`memlm.data.babilong`),
asked at each length; accuracy by BABILong's rule (the answer in the first sentence of the reply),
with a 95% Wilson interval. Samples are answered `batch_size` at a time, one per batch row. With a
token memory (`importance`), each sample's details also say whether the answer's words were in memory
when the question came (`answer_in_memory`) and show that memory's text.

`babilong-unseen/qa1` ... : the same stories told about people, places and objects that training
never draws (`memlm.data.cast`, the unseen split): a memory that learned to keep facts answers both;
one that learned bAbI's words answers only the first."""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from memlm.data import babilong, needles
from memlm.data.cast import Recast
from memlm.errors import ConfigError
from memlm.eval import scoring
from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun

MEMORY_TEXT_SHOWN = 1000  # characters of a token memory's content kept in each sample's details


def haystack_text(source: str) -> str:
    """The haystack a suite names: a corpus (`memlm corpus list`) or a UTF-8 text file."""
    path = Path(source).expanduser()
    stat = path.stat() if path.is_file() else None
    return _haystack_text(source, stat.st_mtime_ns if stat else None, stat.st_size if stat else None)


@lru_cache(maxsize=4)
def _haystack_text(source: str, modified: int | None, size: int | None) -> str:
    """Read once per version of a file (the key changes when the file does)."""
    from memlm.data.corpora import load_corpus

    path = Path(source).expanduser()
    if modified is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"haystack {path} is not UTF-8 text ({error})") from None
        if not babilong.split_sentences(text):
            raise ConfigError(f"haystack {path} has no sentences")
        return text
    return load_corpus(source)


class BabilongTask(EvalTask):
    family = "babilong"
    settings = ("babilong_tasks", "babilong_haystack", "lengths", "long_", "samples")
    transform: Recast | None = None  # bAbI's own people, places and objects
    generate = staticmethod(babilong.generate)

    @staticmethod
    def prompt(sample: Any) -> str:
        return babilong.question_prompt(sample)

    @staticmethod
    def correct(sample: Any, reply: str) -> bool:
        return scoring.babilong_correct(reply, sample.answer, sample.answer_labels, sample.question)

    def task_names(self, suite: Any) -> list[str]:
        return [f"{self.family}/{name}" for name in suite.babilong_tasks]

    def identity(self, contender: Any, suite: Any) -> dict[str, Any]:
        # A file's path says nothing about its content: key on the text itself.
        return {"haystack_sha256": hashlib.sha256(haystack_text(suite.babilong_haystack).encode()).hexdigest()[:16]}

    def samples(self, run: TaskRun, name: str, length: int) -> list[babilong.Sample]:
        # Every contender answers the same samples; building a 16K+ haystack is worth doing once.
        key = (self.family, name, length)
        if key not in run.shared:
            run.shared[key] = generate_in_parallel(self.generate, name, run.suite.samples, length, run,
                                                   self.transform)
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
            samples = self.samples(run, name, length)
            new_details = []
            for first in range(0, len(samples), run.suite.batch_size):
                batch = samples[first:first + run.suite.batch_size]
                replies = contender.answer_batch([s.context for s in batch],
                                                 [[self.prompt(s)] for s in batch],
                                                 [s.question for s in batch])
                held = getattr(contender, "memory_texts", None) or [None] * len(batch)
                for sample, reply, text in zip(batch, replies, held, strict=True):
                    if reply is None:  # does not fit `full`'s window
                        continue
                    hit = self.correct(sample, reply[0])
                    detail = {"length": length, "question": sample.question, "answer": sample.answer,
                              "reply": reply[0], "correct": hit}
                    if text is not None:  # a miss with the answer in memory was misread, not forgotten
                        detail.update(answer_in_memory=needles.answer_correct(text, sample.answer),
                                      memory_text=text[:MEMORY_TEXT_SHOWN])
                    new_details.append(detail)
            correct = sum(detail["correct"] for detail in new_details)
            new_records = [accuracy_record(length, correct, len(new_details))] if new_details else []
            run.save_partial(task, contender.name, length, new_records, new_details)
            records += new_records
            details += new_details
            if run.progress and length >= 16384:
                tqdm.write(f"{task} x {contender.name} at {length} tokens: {correct}/{len(new_details)} correct "
                           f"({time.perf_counter() - started:.0f} s)")
        return PairResult(records, details)


class UnseenCastTask(BabilongTask):
    """The same stories with the unseen cast's people, places and objects (bAbI's verbs kept)."""

    family = "babilong-unseen"
    settings = ("unseen_babilong_tasks", "babilong_haystack", "lengths", "long_", "samples")
    transform = Recast("unseen")

    def task_names(self, suite: Any) -> list[str]:
        return [f"{self.family}/{name}" for name in suite.unseen_babilong_tasks]


def generate_in_parallel(generate: Any, task: str | None, count: int, length: int, run: TaskRun,
                         transform: Any = None) -> list[Any]:
    """`count` samples from a generator (`babilong.generate`, or `generate_followup` with task None),
    built by several processes when there are many long ones (the same samples as one process builds)."""
    haystack = [haystack_text(run.suite.babilong_haystack)]
    arguments = ([task] if task is not None else [])
    workers = min(16, max(1, (os.cpu_count() or 1) - 1), count) if length >= 8192 and count >= 8 else 1
    if workers == 1:
        return generate(*arguments, count, length, run.suite.seed, run.count_tokens, haystack, transform)
    chunk = -(-count // workers)
    jobs = [(first, min(chunk, count - first)) for first in range(0, count, chunk)]
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
        parts = pool.map(_generate_part, [(generate, arguments, n, length, run.suite.seed, run.tokenizer, haystack,
                                           transform, first) for first, n in jobs])
        return [sample for part in parts for sample in part]


def _generate_part(job: tuple) -> list[Any]:
    generate, arguments, n, length, seed, tokenizer, haystack, transform, first = job
    count_tokens = _TokenCounter(tokenizer)
    return generate(*arguments, n, length, seed, count_tokens, haystack, transform, first=first)


class _TokenCounter:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)


def accuracy_record(length: int | None, correct: int, answered: int) -> dict[str, Any]:
    """An accuracy record with its 95% Wilson interval."""
    return {"length": length, "metric": "accuracy", "value": correct / answered, "n": answered,
            "ci95": list(scoring.wilson_interval(correct, answered)), "higher_is_better": True}
