"""The side-by-side report: results.json, the Markdown tables and the PNG plots."""

from __future__ import annotations

import pytest

from memlm.errors import ConfigError
from memlm.eval.report import format_length, format_value, headline_table, write_report
from memlm.serialization import read_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LENGTHS = (0, 1024, 4096)
# accuracy per (task, mechanism) at LENGTHS; means: qa1 none .6 knn .8 dummy .5; qa2 none .5 knn .5 dummy .7
ACCURACY = {
    ("babilong/qa1", "knn-joint"): (0.9, 0.8, 0.7),
    ("babilong/qa1", "dummy-mech"): (0.5, 0.5, 0.5),
    ("babilong/qa1", "none"): (0.9, 0.6, 0.3),
    ("babilong/qa2", "knn-joint"): (0.6, 0.5, 0.4),
    ("babilong/qa2", "dummy-mech"): (0.7, 0.7, 0.7),
    ("babilong/qa2", "none"): (0.8, 0.5, 0.2),
}


def _record(task, mechanism, metric, value, length=None, higher_is_better=True, **extra):
    return {"task": task, "family": task.split("/")[0], "mechanism": mechanism, "length": length, "metric": metric,
            "value": value, "n": 10, "higher_is_better": higher_is_better, "backbone": "tiny-llama", "seconds": 1.5,
            **extra}


@pytest.fixture
def records():
    # The baseline is deliberately seen last: it must still be the first row.
    rows = [_record(task, mechanism, "accuracy", value, length)
            for (task, mechanism), values in ACCURACY.items() for length, value in zip(LENGTHS, values, strict=True)]
    rows += [_record("pg19", "knn-joint", "perplexity", 15.5, higher_is_better=False),
             _record("pg19", "none", "perplexity", 20.0, higher_is_better=False)]
    return rows


def _tables(markdown: str) -> list[dict[str, dict[str, str]]]:
    """Every Markdown table as {row name: {column header: cell}}, in document order."""
    tables, lines = [], markdown.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("| ") and index + 1 < len(lines) and lines[index + 1].startswith("|---"):
            header = [cell.strip() for cell in lines[index].strip("|").split("|")]
            table, index = {}, index + 2
            while index < len(lines) and lines[index].startswith("| "):
                cells = [cell.strip() for cell in lines[index].strip("|").split("|")]
                table[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
                index += 1
            tables.append(table)
        else:
            index += 1
    return tables


def test_headline_rows_columns_and_bolding(records):
    table = _tables(headline_table(records))[0]
    assert list(table) == ["none", "knn-joint", "dummy-mech"]  # baseline first, then first seen
    qa1, qa2, pg19 = "babilong/qa1 · accuracy ↑", "babilong/qa2 · accuracy ↑", "pg19 · perplexity ↓"
    assert {name: cells[qa1] for name, cells in table.items()} == {
        "none": "60.0%", "knn-joint": "**80.0%**", "dummy-mech": "50.0%"}
    assert {name: cells[qa2] for name, cells in table.items()} == {
        "none": "50.0%", "knn-joint": "50.0%", "dummy-mech": "**70.0%**"}
    # Lower perplexity wins; a mechanism that never ran the task shows a dash.
    assert {name: cells[pg19] for name, cells in table.items()} == {
        "none": "20.00", "knn-joint": "**15.50**", "dummy-mech": "—"}


def test_direction_of_bolding_follows_higher_is_better():
    def best(higher: bool) -> str:
        table = _tables(headline_table([_record("t", "a", "score", 0.25, higher_is_better=higher),
                                        _record("t", "b", "score", 0.75, higher_is_better=higher)]))[0]
        (winner,) = [name for name, cells in table.items() if cells[next(iter(cells))].startswith("**")]
        return winner

    assert best(True) == "b"
    assert best(False) == "a"


def test_ties_are_all_bold_and_a_lone_value_is_not():
    tied = _tables(headline_table([_record("t", m, "bleu", v) for m, v in (("a", 30.01), ("b", 29.99), ("c", 1.0))]))
    assert [cells["t · bleu ↑"] for cells in tied[0].values()] == ["**30.0**", "**30.0**", "1.0"]
    alone = _tables(headline_table([_record("t", "a", "bleu", 30.0), _record("u", "b", "bleu", 10.0)]))[0]
    assert alone["a"]["t · bleu ↑"] == "30.0" and alone["a"]["u · bleu ↑"] == "—"


def test_partial_coverage_is_marked_and_not_ranked():
    # "rag" only ran the long length, where everything scores lower: its mean is not comparable.
    records = [_record("passkey", "none", "recall", 1.0, 0), _record("passkey", "none", "recall", 0.2, 4096),
               _record("passkey", "knn", "recall", 1.0, 0), _record("passkey", "knn", "recall", 0.6, 4096),
               _record("passkey", "rag", "recall", 0.9, 4096)]
    markdown = headline_table(records)
    cells = {name: row["passkey · recall ↑"] for name, row in _tables(markdown)[0].items()}
    assert cells == {"none": "60.0%", "knn": "**80.0%**", "rag": "90.0%†"}
    assert "† averaged over other lengths" in markdown


def test_any_mechanism_name_and_backbones_are_kept_apart():
    records = [_record("t", "brand-new", "accuracy", 0.5, backbone="a"),
               _record("t", "brand-new", "accuracy", 0.9, backbone="b")]
    table = _tables(headline_table(records))[0]
    assert table["brand-new [a]"]["t · accuracy ↑"] == "50.0%"
    assert table["brand-new [b]"]["t · accuracy ↑"] == "**90.0%**"


def test_write_report_files(records, tmp_path):
    notes = ["Seeds fixed at 0.", "dummy-mech is a test mechanism."]
    command = "memlm eval babilong --mechanisms none,knn-joint,dummy-mech"
    paths = write_report(records, tmp_path / "run", title="BABILong smoke", command=command, notes=notes)
    assert set(paths) == {"results.json", "results.md", "accuracy_vs_length.png", "perplexity.png"}
    assert all(path.parent == tmp_path / "run" for path in paths.values())

    saved = read_json(paths["results.json"])
    assert set(saved) == {"title", "command", "records", "created"}
    assert saved["records"] == records
    assert (saved["title"], saved["command"]) == ("BABILong smoke", command)

    markdown = paths["results.md"].read_text(encoding="utf-8")
    assert markdown.startswith("# BABILong smoke\n")
    assert f"```bash\n{command}\n```" in markdown
    assert headline_table(records) in markdown
    assert markdown.rstrip().endswith("- dummy-mech is a test mechanism.")
    headline, babilong = _tables(markdown)
    assert set(headline) == {"none", "knn-joint", "dummy-mech"}
    # The family table averages qa1 and qa2 per length: at 0 none (.9+.8)/2 wins, at 4K dummy-mech (.5+.7)/2.
    assert list(babilong["none"]) == ["0", "1K", "4K"]
    assert babilong["none"]["0"] == "**85.0%**"
    assert babilong["knn-joint"]["0"] == "75.0%"
    assert babilong["dummy-mech"]["4K"] == "**60.0%**"
    assert babilong["none"]["4K"] == "25.0%"

    for name in ("accuracy_vs_length.png", "perplexity.png"):
        data = paths[name].read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000


def test_plots_only_for_what_exists(tmp_path):
    only_perplexity = [_record("pg19", "none", "perplexity", 20.0, higher_is_better=False)]
    assert set(write_report(only_perplexity, tmp_path / "a", title="t", command="c")) == {
        "results.json", "results.md", "perplexity.png"}
    no_lengths = [_record("qa", "none", "accuracy", 0.5)]
    assert set(write_report(no_lengths, tmp_path / "b", title="t", command="c")) == {"results.json", "results.md"}


def test_formats():
    assert format_value("accuracy", 0.8125) == "81.2%"
    assert format_value("recall@5", 1.0) == "100.0%"
    assert format_value("perplexity", 12.3456) == "12.35"
    assert format_value("bleu", 27.26) == "27.3"
    assert format_value("rougeL", 0.41234) == "0.412"
    assert [format_length(n) for n in (0, 1000, 1024, 4096, 16384, 1 << 20)] == ["0", "1000", "1K", "4K", "16K", "1M"]


def test_bad_records_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="lacks value"):
        headline_table([{"task": "t", "mechanism": "m", "metric": "accuracy"}])
    with pytest.raises(ConfigError, match="non-numeric"):
        headline_table([_record("t", "m", "accuracy", "high")])
    with pytest.raises(ConfigError, match="length"):
        write_report([_record("t", "m", "accuracy", 0.5, length=-1)], tmp_path, title="t", command="c")
