"""Human evaluation: blind pairwise votes between two contenders, and their win rates with intervals.

The server's compare view (and `POST /v1/eval/comparisons`) has two contenders answer the same
prompt, shown in random order as A and B; a person picks the better one or a tie. Each comparison and
its vote is a row of `<home>/human_eval.sqlite`. `summarise` turns the votes into win rates:

* a tie counts half a win for each side, so a contender's win rate is (wins + ties / 2) / votes;
* the 95% interval is Wilson's score interval on that rate (good at small n and near 0 or 1).

`write_human_report(out_dir)` adds the summary to an evaluation report folder (results.json records,
a "Human evaluation" section in results.md, `human_eval.png`): `memlm eval human --out DIR`.
Contenders are model ids such as `SmolLM2-135M-Instruct+bank`; in the report they are named by
their memories (`bank`, or `none` for the bare backbone), as the report's other rows are.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError
from memlm.paths import home_dir
from memlm.serialization import atomic_write_bytes
from memlm.store.sqlite import connect, transaction

VOTES_FILE = "human_eval.sqlite"
CHOICES = ("A", "B", "tie")
TASK = "human/pairwise"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,             -- who was shown the answers and votes
    prompt TEXT NOT NULL,
    contender_a TEXT NOT NULL,
    contender_b TEXT NOT NULL,
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    created REAL NOT NULL,
    choice TEXT,                    -- 'A', 'B', 'tie' or NULL (not voted yet)
    voted REAL
);
CREATE INDEX IF NOT EXISTS comparisons_user ON comparisons (user);
"""


@dataclass(frozen=True)
class Comparison:
    id: str
    user: str
    prompt: str
    contender_a: str
    contender_b: str
    answer_a: str
    answer_b: str
    created: float
    choice: str | None
    voted: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def winner(self) -> str | None:
        return {"A": self.contender_a, "B": self.contender_b, "tie": "tie"}.get(self.choice or "")


def votes_path(home: str | os.PathLike | None = None) -> Path:
    return home_dir(home) / VOTES_FILE


class VoteStore:
    """Comparisons and votes in one SQLite file (shared by the server and `memlm eval human`)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else votes_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = connect(self.path, _SCHEMA, 1)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.connection.close()

    def add(self, user: str, prompt: str, contender_a: str, contender_b: str, answer_a: str, answer_b: str
            ) -> Comparison:
        comparison_id = "cmp-" + secrets.token_hex(8)
        with self._lock, transaction(self.connection):
            self.connection.execute(
                "INSERT INTO comparisons (id, user, prompt, contender_a, contender_b, answer_a, answer_b, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (comparison_id, user, prompt, contender_a, contender_b, answer_a, answer_b, time.time()))
        return self.get(comparison_id, user)

    def get(self, comparison_id: str, user: str | None = None) -> Comparison:
        sql, params = "SELECT * FROM comparisons WHERE id = ?", [comparison_id]
        if user is not None:
            sql, params = sql + " AND user = ?", [*params, user]
        with self._lock:
            row = self.connection.execute(sql, params).fetchone()
        if row is None:
            raise KeyError(f"no comparison with id {comparison_id!r}")
        return Comparison(*row)

    def vote(self, comparison_id: str, user: str, choice: str) -> Comparison:
        """Record the vote of a comparison (once: a second vote is a `ConfigError`)."""
        if choice not in CHOICES:
            raise ConfigError(f"choice must be one of {CHOICES}, got {choice!r}")
        with self._lock, transaction(self.connection):
            cursor = self.connection.execute(
                "UPDATE comparisons SET choice = ?, voted = ? WHERE id = ? AND user = ? AND choice IS NULL",
                (choice, time.time(), comparison_id, user))
        if cursor.rowcount == 0:
            existing = self.get(comparison_id, user)  # KeyError when it is not this user's
            raise ConfigError(f"comparison {existing.id} was already voted ({existing.choice})")
        return self.get(comparison_id, user)

    def votes(self) -> list[Comparison]:
        with self._lock:
            rows = self.connection.execute("SELECT * FROM comparisons WHERE choice IS NOT NULL ORDER BY voted")
            return [Comparison(*row) for row in rows]


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: ties count half)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mechanism_of(contender: str) -> str:
    """`SmolLM2-135M-Instruct+bank+recurrent` -> `bank+recurrent`; the bare backbone -> `none`."""
    _, _, memories = contender.partition("+")
    return memories or "none"


def summarise(votes: Iterable[Comparison]) -> dict[str, Any]:
    """Win rates per contender (against all others) and per pair, with 95% Wilson intervals."""
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    for vote in votes:
        first, second = sorted((vote.contender_a, vote.contender_b))
        counts = pairs.setdefault((first, second), {"first": 0, "second": 0, "tie": 0})
        if vote.choice == "tie":
            counts["tie"] += 1
        else:
            counts["first" if vote.winner == first else "second"] += 1
    pair_rows = []
    totals: dict[str, dict[str, float]] = {}
    for (first, second), counts in sorted(pairs.items()):
        n = counts["first"] + counts["second"] + counts["tie"]
        rate = (counts["first"] + 0.5 * counts["tie"]) / n
        low, high = wilson(counts["first"] + 0.5 * counts["tie"], n)
        pair_rows.append({"a": first, "b": second, "n": n, "a_wins": counts["first"], "b_wins": counts["second"],
                          "ties": counts["tie"], "a_win_rate": rate, "ci_low": low, "ci_high": high})
        for name, won in ((first, counts["first"]), (second, counts["second"])):
            total = totals.setdefault(name, {"wins": 0, "ties": 0, "n": 0})
            total["wins"] += won
            total["ties"] += counts["tie"]
            total["n"] += n
    contenders = []
    for name, total in sorted(totals.items()):
        score = total["wins"] + 0.5 * total["ties"]
        low, high = wilson(score, int(total["n"]))
        contenders.append({"contender": name, "mechanism": mechanism_of(name), "n": int(total["n"]),
                           "wins": int(total["wins"]), "ties": int(total["ties"]),
                           "losses": int(total["n"] - total["wins"] - total["ties"]),
                           "win_rate": score / total["n"], "ci_low": low, "ci_high": high})
    return {"votes": sum(row["n"] for row in pair_rows), "contenders": contenders, "pairs": pair_rows}


def human_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Report records (memlm.eval.report) of a summary: one win rate per contender, with its interval."""
    return [{"task": TASK, "family": "human", "mechanism": row["mechanism"], "length": None, "metric": "win_rate",
             "value": row["win_rate"], "n": row["n"], "higher_is_better": True, "ci_low": row["ci_low"],
             "ci_high": row["ci_high"], "contender": row["contender"]} for row in summary["contenders"]]


def summary_markdown(summary: dict[str, Any]) -> str:
    """The "Human evaluation" section of results.md."""
    lines = ["## Human evaluation", "",
             f"{summary['votes']} blind pairwise votes (two contenders answer the same prompt, shown in random order; "
             "a tie counts half a win for each). Win rate with its 95% Wilson interval.", ""]
    if not summary["votes"]:
        return "\n".join([*lines, "No votes yet.", ""])
    lines += ["| contender | votes | wins | ties | losses | win rate [95% CI] |", "|---|---:|---:|---:|---:|---|"]
    for row in summary["contenders"]:
        lines.append(f"| {row['mechanism']} | {row['n']} | {row['wins']} | {row['ties']} | {row['losses']} | "
                     f"{100 * row['win_rate']:.0f}% [{100 * row['ci_low']:.0f}–{100 * row['ci_high']:.0f}%] |")
    lines += ["", "| pair (a vs b) | votes | a wins | ties | b wins | a's win rate [95% CI] |",
              "|---|---:|---:|---:|---:|---|"]
    for row in summary["pairs"]:
        lines.append(f"| {mechanism_of(row['a'])} vs {mechanism_of(row['b'])} | {row['n']} | {row['a_wins']} | "
                     f"{row['ties']} | {row['b_wins']} | {100 * row['a_win_rate']:.0f}% "
                     f"[{100 * row['ci_low']:.0f}–{100 * row['ci_high']:.0f}%] |")
    return "\n".join([*lines, ""])


def plot_summary(summary: dict[str, Any]) -> bytes:
    """Win rate per contender with its interval as error bars (PNG)."""
    import io

    from matplotlib.figure import Figure

    rows: Sequence[dict[str, Any]] = summary["contenders"]
    figure = Figure(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.4), layout="constrained")
    ax = figure.subplots()
    xs = range(len(rows))
    rates = [100 * r["win_rate"] for r in rows]
    errors = [[100 * (r["win_rate"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["win_rate"]) for r in rows]]
    ax.bar(xs, rates, yerr=errors, capsize=6, color="#4c78a8")
    ax.axhline(50, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), [f"{r['mechanism']}\n(n={r['n']})" for r in rows])
    ax.set_ylim(0, 100)
    ax.set_ylabel("win rate (%) ↑, 95% CI")
    ax.set_title(f"Human evaluation: {summary['votes']} blind pairwise votes", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_human_report(out_dir: str | os.PathLike, store: VoteStore) -> dict[str, Path]:
    """Add the votes' summary to the report in `out_dir` (creating one if there is none): the win-rate
    records join results.json, results.md gets a "Human evaluation" section, and human_eval.png."""
    from memlm.eval.report import write_report

    out_dir = Path(out_dir)
    summary = summarise(store.votes())
    results = out_dir / "results.json"
    title, command, records, notes = "Human evaluation", "memlm eval human", [], []
    if results.exists():
        saved = json.loads(results.read_text(encoding="utf-8"))
        title, command = saved.get("title", title), saved.get("command", command)
        records = [r for r in saved.get("records", []) if r.get("task") != TASK]
    records += human_records(summary)
    paths = write_report(records, out_dir, title=title, command=command, notes=notes) if records else {}
    markdown = out_dir / "results.md"
    text = markdown.read_text(encoding="utf-8") if markdown.exists() else f"# {title}\n\n"
    atomic_write_bytes(markdown, (text.rstrip("\n") + "\n\n" + summary_markdown(summary)).encode("utf-8"))
    paths["results.md"] = markdown
    if summary["votes"]:
        paths["human_eval.png"] = out_dir / "human_eval.png"
        atomic_write_bytes(paths["human_eval.png"], plot_summary(summary))
    return paths
