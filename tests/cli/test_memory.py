"""`memlm memorize` and the `memlm memory` group on a tiny local backbone.

The tiny tokenizer is byte-level, so a memorized text is stored as one record per character: the
records, in order, spell the text out again.
"""

from __future__ import annotations

import json

import pytest

TEXT = "Ada keeps a telescope in the attic.\nThe fox sleeps.\n"


@pytest.fixture
def memorized(run, tiny_folder, tmp_path):
    """The session 's' holding TEXT in a knn-joint memory, under its own --home (not $MEMLM_HOME)."""
    source = tmp_path / "notes.txt"
    source.write_text(TEXT, encoding="utf-8")
    home = tmp_path / "memorized-home"
    result = run("--home", home, "memorize", source, "--session", "s", "--backbone", tiny_folder,
                 "--segment-length", 16)
    assert result.exit_code == 0, result.output
    assert f"memorized {source} in 4 segment(s) into session 's'" in result.output
    return home


def listed(run, home, *args):
    result = run("--home", home, "memory", "list", "--session", "s", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_memorize_stores_the_text_with_provenance(run, memorized):
    records = listed(run, memorized, "--limit", 1000)
    assert "".join(record["text"] for record in records) == TEXT
    assert {(record["session"], record["sequence"], record["kind"]) for record in records} == {("s", 1, "attention")}
    assert [record["position"] for record in records] == list(range(len(TEXT)))
    stats = json.loads(run("--home", memorized, "memory", "stats", "--session", "s", "--json").stdout)
    assert stats["records"] == len(TEXT)


def test_memorize_again_appends_to_the_session(run, memorized, tiny_folder, tmp_path):
    result = run("--home", memorized, "memorize", tmp_path / "notes.txt", "--session", "s", "--backbone", tiny_folder,
                 "--segment-length", 16)
    assert result.exit_code == 0, result.output
    assert len(listed(run, memorized, "--limit", 1000)) == 2 * len(TEXT)


def test_memorize_refuses_an_empty_file(run, tiny_folder, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    result = run("memorize", empty, "--session", "s", "--backbone", tiny_folder)
    assert result.exit_code == 2 and "is empty" in result.output


def test_memory_list_pages_and_filters(run, memorized):
    assert [record["text"] for record in listed(run, memorized, "--limit", 3)] == list(TEXT[:3])
    assert [record["position"] for record in listed(run, memorized, "--limit", 2, "--offset", 5)] == [5, 6]
    assert [record["id"] for record in listed(run, memorized, "--id", 4, "--id", 9)] == [4, 9]
    assert listed(run, memorized, "--record-session", "other") == []
    assert len(listed(run, memorized, "--sequence", 1, "--limit", 1000)) == len(TEXT)
    table = run("--home", memorized, "memory", "list", "--session", "s", "--limit", 2)
    assert table.exit_code == 0, table.output
    rows = [line.split("│")[1:-1] for line in table.output.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [["1", "attention", "-1", "s", "1", "0", "A"],
                                                                ["2", "attention", "-1", "s", "1", "1", "d"]]


def test_memory_list_by_path(run, memorized, tmp_path):
    result = run("--home", tmp_path / "elsewhere", "memory", "list", "--path", memorized / "sessions" / "s" / "knn",
                 "--json", "--limit", 1)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["text"] == "A"


def test_memory_search_finds_the_spans(run, memorized):
    def search(*args):
        result = run("--home", memorized, "memory", "search", *args, "--session", "s", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    found = search("FOX")  # a record's context is its span and the few characters before it
    assert found and all("fox" in record["context"] for record in found)
    assert found[0]["position"] == TEXT.index("fox") + 2 and found[0]["text"] == "x"
    assert search("FOX", "--limit", 1) == found[:1]
    assert search("zebra") == []


def test_memory_export_writes_every_record_as_json_lines(run, memorized, tmp_path):
    output = tmp_path / "export.jsonl"
    result = run("--home", memorized, "memory", "export", output, "--session", "s")
    assert result.exit_code == 0, result.output
    assert f"exported {len(TEXT)} record(s) to {output}" in result.output
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == listed(run, memorized, "--limit", 1000)
    assert "".join(json.loads(line)["text"] for line in lines) == TEXT


def test_memory_delete_by_id_text_and_everything(run, memorized):
    refused = run("--home", memorized, "memory", "delete", "--session", "s")
    assert refused.exit_code == 2 and "say what to delete" in refused.output
    by_id = run("--home", memorized, "memory", "delete", "--session", "s", "--id", 1, "--id", 2)
    assert by_id.exit_code == 0, by_id.output
    assert by_id.output.startswith("deleted 2 item(s); ")
    assert listed(run, memorized, "--limit", 1)[0]["id"] == 3
    by_text = run("--home", memorized, "memory", "delete", "--session", "s", "--text", "fox")
    assert by_text.exit_code == 0, by_text.output
    assert listed(run, memorized, "--text", "fox") == [] and listed(run, memorized, "--text", "keeps")
    everything = run("--home", memorized, "memory", "delete", "--session", "s", "--all")
    assert everything.exit_code == 0 and everything.output.endswith("item(s); 0 left\n")
    assert listed(run, memorized) == []


def test_memory_stats_table(run, memorized):
    result = run("--home", memorized, "memory", "stats", "--session", "s")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{len(TEXT)} record(s); backend ")
    row = next(line for line in result.output.splitlines() if line.startswith("│"))
    assert [cell.strip() for cell in row.split("│")[1:5]] == ["attention", "-1", "s", str(len(TEXT))]


@pytest.mark.parametrize(("args", "message"), [
    ([], "give exactly one of --session or --path"),
    (["--session", "s", "--path", "x"], "give exactly one of --session or --path"),
    (["--session", "nobody"], "no saved memory store in"),
])
def test_memory_needs_one_saved_store(run, args, message):
    result = run("memory", "list", *args)
    assert result.exit_code == 2 and message in result.output
