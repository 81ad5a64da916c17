"""What an evaluation task is to the harness: a family of tasks that runs one contender and returns
records (one number each) and details (every reply).

A task family declares which suite settings its results depend on (the pair cache is keyed by them)
and runs one task for one contender through a `TaskRun`, which gives it the suite, the tokenizer and
a place to cache partial results. `memlm.eval.harness` does the rest: the grid, the pair cache, the
report. Adding a task is one class in one file plus its line in `memlm.eval.tasks.TASK_FAMILIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from memlm.serialization import atomic_write_json, read_json

if TYPE_CHECKING:
    from memlm.eval.contenders import Contender


@dataclass
class PairResult:
    """One (task, contender) pair's outcome: `records` are numbers, `details` every reply behind them."""

    records: list[dict[str, Any]]
    details: list[dict[str, Any]]


@dataclass
class TaskRun:
    """What the harness hands a task: the suite, the tokenizer, and a cache for partial results."""

    suite: Any
    tokenizer: Any
    window: int
    out_dir: Path
    pair_key: str
    progress: bool = True
    shared: dict[Any, Any] = field(default_factory=dict)  # e.g. generated samples, reused by every contender
    log: Callable[[str], None] = print

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _partial_path(self, task: str, contender: str, part: Any) -> Path:
        from memlm.eval.harness import file_label

        return self.out_dir / "pairs" / "partial" / f"{task.replace('/', '__')}__{file_label(contender)}__{part}.json"

    def load_partial(self, task: str, contender: str, part: Any) -> dict[str, Any] | None:
        """A part of a pair finished earlier under the same key (e.g. one length of a long run)."""
        path = self._partial_path(task, contender, part)
        cached = read_json(path) if path.exists() else None
        return cached if isinstance(cached, dict) and cached.get("key") == self.pair_key else None

    def save_partial(self, task: str, contender: str, part: Any, records: list[dict[str, Any]],
                     details: list[dict[str, Any]]) -> None:
        atomic_write_json(self._partial_path(task, contender, part),
                          {"key": self.pair_key, "records": records, "details": details})


class EvalTask(ABC):
    """A family of evaluation tasks (e.g. `babilong` with `babilong/qa1` ... `babilong/qa5`)."""

    family: ClassVar[str]
    # Prefixes of the `Suite` fields this family's results depend on (the pair cache is keyed by them).
    settings: ClassVar[tuple[str, ...]]

    def task_names(self, suite: Any) -> list[str]:
        """The tasks of this family in `suite` (default: one, named after the family's report row)."""
        return [self.default_task]

    default_task: ClassVar[str] = ""

    def answer_tokens(self, suite: Any) -> int:
        """How many new tokens each reply of this family may have (default: the suite's `max_new_tokens`)."""
        return suite.max_new_tokens

    def identity(self, contender: Contender, suite: Any) -> dict[str, Any]:
        """Extra facts its cached result depends on beyond the suite's settings (e.g. how `contender`
        runs it, or the content of a file the suite names)."""
        return {}

    @abstractmethod
    def run(self, task: str, contender: Contender, run: TaskRun) -> PairResult:
        """Run `task` for `contender` and return its records and details."""
