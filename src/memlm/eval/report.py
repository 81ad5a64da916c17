"""Side-by-side reports of evaluation results: results.json, results.md and PNG plots.

The harness produces one plain, JSON-safe record per (task, mechanism, length, metric):

    {"task": "babilong/qa1", "family": "babilong", "mechanism": "knn-joint", "length": 4096,
     "metric": "accuracy", "value": 0.81, "n": 100, "higher_is_better": True,
     "backbone": "SmolLM2-135M-Instruct", "seconds": 12.5}

`length` may be None (length-independent tasks); `family` defaults to the part of `task` before
"/"; `higher_is_better` defaults to False for perplexity/loss-like metrics and True otherwise.
Mechanism names are taken from the records, so a newly registered mechanism shows up unchanged.
Fractions (accuracy, recall, ...) are expected in 0..1 and shown as percentages.

Example:
    >>> records = [
    ...     {"task": "babilong/qa1", "mechanism": "none", "length": 0, "metric": "accuracy", "value": 0.5},
    ...     {"task": "babilong/qa1", "mechanism": "knn-joint", "length": 0, "metric": "accuracy", "value": 0.75},
    ... ]
    >>> print(headline_table(records))
    | mechanism | babilong/qa1 · accuracy ↑ |
    |---|---:|
    | none | 50.0% |
    | knn-joint | **75.0%** |
    >>> paths = write_report(records, Path("runs/demo"), title="Demo", command="memlm eval ...")
    >>> sorted(paths)
    ['accuracy_vs_length.png', 'results.json', 'results.md']
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError
from memlm.serialization import atomic_write_bytes, atomic_write_json

BASELINE = "none"
# `length` is a context length for most families; for the forgetting curve it counts facts.
AXIS_LABELS = {"continual": "facts learned after the one asked"}
MISSING = "—"
PARTIAL = "†"

# Fractions shown as percentages; matched on the name before any "@" (so "recall@5" is a percentage too).
PERCENT_METRICS = frozenset({"accuracy", "acc", "recall", "precision", "exact_match", "em", "hit_rate"})
PERPLEXITY_METRICS = frozenset({"perplexity", "ppl"})
LOWER_IS_BETTER = PERPLEXITY_METRICS | {"loss", "nll", "bits_per_byte", "bpb", "seconds", "latency"}


@dataclass(frozen=True)
class _Record:
    task: str
    family: str
    mechanism: str
    length: int | None
    metric: str
    value: float
    higher_is_better: bool
    backbone: str | None
    row: str = ""  # the table row it belongs to; see _rows


# --- formatting ---------------------------------------------------------------------------------


def _metric_base(metric: str) -> str:
    return metric.lower().split("@", 1)[0]


def is_percent_metric(metric: str) -> bool:
    return _metric_base(metric) in PERCENT_METRICS


def is_perplexity_metric(metric: str) -> bool:
    return _metric_base(metric) in PERPLEXITY_METRICS


def format_value(metric: str, value: float) -> str:
    """How a metric is printed: fractions as %, perplexity 2 decimals, BLEU 1 decimal, others 3 decimals.

    Example:
        >>> format_value("accuracy", 0.8125), format_value("perplexity", 12.3456), format_value("bleu", 27.26)
        ('81.2%', '12.35', '27.3')
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    base = _metric_base(metric)
    if base in PERCENT_METRICS:
        return f"{100.0 * value:.1f}%"
    if base in PERPLEXITY_METRICS:
        return f"{value:.2f}"
    if base == "bleu":
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_length(length: int | None) -> str:
    """Context lengths as readers know them: 0, 512, 1K, 4K, 16K, 1M (K = 1024 tokens).

    Example:
        >>> [format_length(n) for n in (0, 1000, 1024, 16384, 1048576, None)]
        ['0', '1000', '1K', '16K', '1M', 'n/a']
    """
    if length is None:
        return "n/a"
    if length >= 1 << 20 and length % (1 << 20) == 0:
        return f"{length >> 20}M"
    if length >= 1024 and length % 1024 == 0:
        return f"{length >> 10}K"
    return str(length)


def _cell(text: str) -> str:
    # A "|" inside a cell would end it; newlines would end the row.
    return text.replace("|", r"\|").replace("\n", " ")


# --- records ------------------------------------------------------------------------------------


def _normalise(record: Mapping[str, Any], index: int) -> _Record:
    if not isinstance(record, Mapping):
        raise ConfigError(f"result record {index} must be a dict, got {type(record).__name__}")
    missing = [key for key in ("task", "mechanism", "metric", "value") if record.get(key) is None]
    if missing:
        raise ConfigError(f"result record {index} lacks {', '.join(missing)}: {dict(record)}")
    try:
        value = float(record["value"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"result record {index} has a non-numeric value {record['value']!r}") from error
    length = record.get("length")
    if length is not None:
        if isinstance(length, bool) or not float(length).is_integer() or length < 0:
            raise ConfigError(f"result record {index} has length {length!r}; expected a whole number >= 0 or None")
        length = int(length)
    task, metric = str(record["task"]), str(record["metric"])
    higher = record.get("higher_is_better")
    if higher is None:
        higher = _metric_base(metric) not in LOWER_IS_BETTER
    backbone = record.get("backbone")
    return _Record(task=task, family=str(record.get("family") or task.split("/", 1)[0]),
                   mechanism=str(record["mechanism"]), length=length, metric=metric, value=value,
                   higher_is_better=bool(higher), backbone=None if backbone is None else str(backbone))


def _prepare(records: Iterable[Mapping[str, Any]]) -> tuple[list[_Record], list[str]]:
    """Normalised records with their row labels, and the rows in display order.

    Rows are mechanisms in the order first seen, the `none` baseline first. When the records mix
    backbones, a row is "mechanism [backbone]": averaging across backbones would compare nothing.
    """
    parsed = [_normalise(record, index) for index, record in enumerate(records)]
    multi_backbone = len({record.backbone for record in parsed if record.backbone is not None}) > 1
    labelled = []
    for record in parsed:
        tagged = multi_backbone and record.backbone is not None
        row = f"{record.mechanism} [{record.backbone}]" if tagged else record.mechanism
        labelled.append(replace(record, row=row))
    seen = list(dict.fromkeys(record.row for record in labelled))
    baseline = {record.row for record in labelled if record.mechanism == BASELINE}
    return labelled, [row for row in seen if row in baseline] + [row for row in seen if row not in baseline]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _by_length(records: Iterable[_Record]) -> dict[int | None, float]:
    """One value per length (repeated records of the same length are averaged)."""
    grouped: dict[int | None, list[float]] = {}
    for record in records:
        grouped.setdefault(record.length, []).append(record.value)
    return {length: _mean(values) for length, values in grouped.items()}


@dataclass
class _Column:
    header: str
    metric: str
    higher_is_better: bool
    cells: dict[str, tuple[float, frozenset]]  # row -> (value, the lengths or tasks it averages)

    def partial(self, row: str) -> bool:
        """Whether a cell averages other lengths/tasks than the column as a whole: not comparable."""
        union = frozenset().union(*(covered for _, covered in self.cells.values()))
        return self.cells[row][1] != union


def _best_rows(column: _Column) -> set[str]:
    """Rows holding the best value of a column, judged as displayed (ties at display precision all win).

    Partial cells (marked †) are not candidates, and neither are NaNs. One comparable value is no
    contest, so then nothing is bold.
    """
    candidates = {row: value for row, (value, _) in column.cells.items()
                  if not column.partial(row) and not math.isnan(value)}
    if len(candidates) < 2:
        return set()
    best = max(candidates.values()) if column.higher_is_better else min(candidates.values())
    shown = format_value(column.metric, best)
    return {row for row, value in candidates.items() if format_value(column.metric, value) == shown}


def _table(first_header: str, rows: Sequence[str], columns: Sequence[_Column]) -> tuple[str, bool]:
    """A Markdown table and whether it holds any † (partial-coverage) cell."""
    lines = ["| " + " | ".join(_cell(text) for text in [first_header, *(c.header for c in columns)]) + " |",
             "|---|" + "---:|" * len(columns)]
    partial = False
    best = [_best_rows(column) for column in columns]
    for row in rows:
        cells = [_cell(row)]
        for column, winners in zip(columns, best, strict=True):
            if row not in column.cells:
                cells.append(MISSING)
                continue
            text = format_value(column.metric, column.cells[row][0])
            if column.partial(row):
                text += PARTIAL
                partial = True
            cells.append(f"**{text}**" if row in winners else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), partial


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _axis(family: str) -> str:
    """What a family's `length` means."""
    return AXIS_LABELS.get(family, "context length (tokens)")


def _headline_columns(records: Sequence[_Record]) -> list[_Column]:
    keys = list(dict.fromkeys((record.task, record.metric) for record in records))
    columns = []
    for task, metric in keys:
        selected = [r for r in records if r.task == task and r.metric == metric]
        higher = selected[0].higher_is_better
        cells = {}
        for row in dict.fromkeys(r.row for r in selected):
            per_length = _by_length(r for r in selected if r.row == row)
            # Each length counts once, so a length with more samples or repeats does not dominate.
            cells[row] = (_mean(list(per_length.values())), frozenset(per_length))
        columns.append(_Column(f"{task} · {metric} {_arrow(higher)}", metric, higher, cells))
    return columns


def headline_table(records: Iterable[Mapping[str, Any]]) -> str:
    """The Markdown headline table: rows are mechanisms (`none` first), columns each (task, metric)
    averaged over lengths; the best value per column is bold (respecting higher_is_better) and
    missing cells are "—". A † marks a cell averaged over other lengths than the rest of its column.

    Example:
        >>> print(headline_table([{"task": "pg19", "mechanism": "none", "metric": "perplexity", "value": 21.5},
        ...                       {"task": "pg19", "mechanism": "knn", "metric": "perplexity", "value": 19.25}]))
        | mechanism | pg19 · perplexity ↓ |
        |---|---:|
        | none | 21.50 |
        | knn | **19.25** |
    """
    return _headline(*_prepare(records))


def _headline(prepared: Sequence[_Record], rows: Sequence[str]) -> str:
    if not prepared:
        return "_No results._"
    table, partial = _table("mechanism", rows, _headline_columns(prepared))
    if partial:
        table += f"\n\n{PARTIAL} averaged over other lengths than the rest of its column; not ranked."
    return table


def _length_groups(records: Sequence[_Record]) -> list[tuple[str, str, list[str], list[int], list[_Column]]]:
    """Per length-dependent (family, metric): (family, metric, tasks, lengths, one column per length).

    A cell is the mean over the family's tasks at that length (each task's repeats averaged first).
    """
    with_length = [r for r in records if r.length is not None]
    groups = []
    for family, metric in dict.fromkeys((r.family, r.metric) for r in with_length):
        selected = [r for r in with_length if r.family == family and r.metric == metric]
        tasks = list(dict.fromkeys(r.task for r in selected))
        lengths = sorted({r.length for r in selected})
        higher = selected[0].higher_is_better
        columns = []
        for length in lengths:
            cells = {}
            for row in dict.fromkeys(r.row for r in selected):
                per_task = {}
                for task in tasks:
                    values = [r.value for r in selected if r.row == row and r.task == task and r.length == length]
                    if values:
                        per_task[task] = _mean(values)
                if per_task:
                    cells[row] = (_mean(list(per_task.values())), frozenset(per_task))
            columns.append(_Column(format_length(length), metric, higher, cells))
        groups.append((family, metric, tasks, lengths, columns))
    return groups


def _fence(command: str) -> str:
    # A fence longer than any backtick run inside the command, so the command is shown verbatim.
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    return "`" * max(3, longest + 1)


def _markdown(prepared: Sequence[_Record], rows: Sequence[str], title: str, command: str,
              notes: Sequence[str], created: str) -> str:
    fence = _fence(command)
    backbones = sorted({r.backbone for r in prepared if r.backbone is not None})
    lines = [f"# {title}", "", "Command:", "", f"{fence}bash", command, fence, ""]
    summary = [f"{len(prepared)} results", f"{len(rows)} mechanisms", f"created {created}"]
    if backbones:
        label = "Backbones" if len(backbones) > 1 else "Backbone"
        summary.insert(0, f"{label} " + ", ".join(f"`{b}`" for b in backbones))
    lines += [" · ".join(summary), ""]
    lines += ["## Headline", "",
              "Each column is one task and metric, averaged over the lengths it was run at; the best value per "
              f"column is **bold** (↑ higher is better, ↓ lower is better); {MISSING} = not run.", "",
              _headline(prepared, rows), ""]
    groups = _length_groups(prepared)
    if groups:
        lines += ["## By length", ""]
    for family, metric, tasks, _, columns in groups:
        higher = columns[0].higher_is_better
        lines += [f"### {family} — {metric} {_arrow(higher)}", ""]
        if len(tasks) > 1:
            lines += [f"Mean over {len(tasks)} tasks ({', '.join(tasks)}); columns: {_axis(family)}.", ""]
        else:
            lines += [f"Task {tasks[0]}; columns: {_axis(family)}.", ""]
        family_rows = [row for row in rows if any(row in column.cells for column in columns)]
        table, partial = _table("mechanism", family_rows, columns)
        lines += [table, ""]
        if partial:
            lines += [f"{PARTIAL} averaged over other tasks than the rest of its column; not ranked.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------


def _styles(rows: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A fixed colour per row across every subplot and plot; the baseline is a dashed black line."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    styles, index = {}, 0
    for row in rows:
        if row.split(" [", 1)[0] == BASELINE:
            styles[row] = {"color": "black", "linestyle": "--"}
        else:
            styles[row] = {"color": palette(index % palette.N), "linestyle": "-"}
            index += 1
    return styles


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _plot_lengths(groups, rows: Sequence[str]) -> bytes:
    """One subplot per (family, metric): value against length, one line per mechanism."""
    # The object-oriented Figure renders with Agg on its own: no pyplot, so importing memlm never
    # switches the backend of a notebook or GUI that embeds it (what matplotlib.use("Agg") would do).
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    styles = _styles(rows)
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    figure = Figure(figsize=(4.6 * ncols + 1.8, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    handles: dict[str, Any] = {}
    for ax, (family, metric, tasks, lengths, columns) in zip(axes, groups, strict=False):  # spare axes are hidden below
        percent = is_percent_metric(metric)
        for row in rows:
            points = [(length, column.cells[row][0]) for length, column in zip(lengths, columns, strict=True)
                      if row in column.cells]
            if not points:
                continue
            xs = [x for x, _ in points]
            ys = [100.0 * y if percent else y for _, y in points]
            (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=row, **styles[row])
            handles.setdefault(row, line)
        positive = [length for length in lengths if length > 0]
        if len(positive) >= 2 or (positive and 0 in lengths):
            if 0 in lengths:
                # symlog: linear up to the smallest real length, log beyond, so 0 sits one step before it
                # instead of at minus infinity.
                ax.set_xscale("symlog", base=2, linthresh=min(positive), linscale=0.6)
            else:
                ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(lengths))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(lengths, [format_length(length) for length in lengths])
        if percent:
            ax.set_ylim(-3, 103)
        title = tasks[0] if len(tasks) == 1 else f"{family} (mean of {len(tasks)} tasks)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(_axis(family))
        ax.set_ylabel(f"{metric}{' (%)' if percent else ''} {_arrow(columns[0].higher_is_better)}")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=9, title="mechanism")
    return _png_bytes(figure)


def _plot_perplexity(prepared: Sequence[_Record], rows: Sequence[str]) -> bytes:
    """Grouped bars: one group per perplexity task, one bar per mechanism (mean over lengths)."""
    from matplotlib.figure import Figure

    columns = [c for c in _headline_columns([r for r in prepared if is_perplexity_metric(r.metric)])]
    styles = _styles(rows)
    present = [row for row in rows if any(row in column.cells for column in columns)]
    width = 0.8 / max(1, len(present))
    figure = Figure(figsize=(max(5.0, 1.2 + 0.5 * len(present) * len(columns) + 1.8), 3.8), layout="constrained")
    ax = figure.subplots()
    for offset, row in enumerate(present):
        xs, heights = [], []
        for index, column in enumerate(columns):
            value = column.cells.get(row, (math.nan, 0))[0]
            if math.isfinite(value):  # an infinite perplexity has no bar to draw; the table shows ∞
                xs.append(index - 0.4 + width * (offset + 0.5))
                heights.append(value)
        bars = ax.bar(xs, heights, width=width * 0.92, label=row, color=styles[row]["color"],
                      hatch="//" if styles[row]["linestyle"] == "--" else None,
                      edgecolor="white" if styles[row]["linestyle"] == "--" else None)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(columns)), [column.header.rsplit(" · ", 1)[0] for column in columns])
    ax.set_ylabel("perplexity ↓ (lower is better)")
    ax.grid(True, axis="y", alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=9, title="mechanism")
    return _png_bytes(figure)


# --- entry point --------------------------------------------------------------------------------


def write_report(records: Iterable[Mapping[str, Any]], out_dir: str | Path, *, title: str, command: str,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write results.json, results.md and the plots into `out_dir`; returns {file name: path}.

    results.json holds {"title", "command", "records", "created"} (records as given, with value,
    length and n coerced to float/int/None, so numpy scalars from the harness serialise). Plots:
    accuracy_vs_length.png when any non-perplexity result has a length, perplexity.png when any
    perplexity result exists. Every file is written atomically.

    Example:
        >>> paths = write_report(records, Path("runs/2024-06-01"), title="BABILong, SmolLM2-135M",
        ...                      command="memlm eval babilong --mechanisms none,knn-joint")
        >>> paths["results.md"].read_text().splitlines()[0]
        '# BABILong, SmolLM2-135M'
    """
    records = list(records)
    prepared, rows = _prepare(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stored = []
    for record, parsed in zip(records, prepared, strict=True):
        copy = dict(record)
        copy["value"] = parsed.value
        copy["length"] = parsed.length
        if copy.get("n") is not None:
            copy["n"] = int(copy["n"])
        stored.append(copy)
    paths = {"results.json": out_dir / "results.json", "results.md": out_dir / "results.md"}
    atomic_write_json(paths["results.json"],
                      {"title": title, "command": command, "records": stored, "created": created})
    atomic_write_bytes(paths["results.md"], _markdown(prepared, rows, title, command, notes, created).encode("utf-8"))
    curves = [group for group in _length_groups(prepared) if not is_perplexity_metric(group[1])]
    if curves:
        paths["accuracy_vs_length.png"] = out_dir / "accuracy_vs_length.png"
        atomic_write_bytes(paths["accuracy_vs_length.png"], _plot_lengths(curves, rows))
    if any(is_perplexity_metric(record.metric) for record in prepared):
        paths["perplexity.png"] = out_dir / "perplexity.png"
        atomic_write_bytes(paths["perplexity.png"], _plot_perplexity(prepared, rows))
    return paths
