"""`memlm eval` on a tiny local backbone: the suite, `eval ppl` and `eval recall`, kept to seconds."""

from __future__ import annotations

import json

import pytest

from memlm.data import multisession


def test_eval_without_a_suite_prints_its_help(run):
    result = run("eval")
    assert result.exit_code == 0, result.output
    assert "Evaluate memories against baselines." in result.stdout and "--suite" in result.stdout
    assert "│ ppl " in result.stdout and "│ recall " in result.stdout


def test_eval_suite_settings_can_be_overridden_from_the_command_line(run, tiny_folder, tmp_path, monkeypatch):
    from memlm.eval.contenders import Contender

    answer_lengths = []
    original = Contender.__init__
    monkeypatch.setattr(Contender, "__init__", lambda self, *a, **k: answer_lengths.append(a[4]) or original(
        self, *a, **k))
    result = run("eval", "--suite", "quick", "--memory", "none", "--tasks", "babilong/qa2", "--lengths", "0",
                 "--samples", 1, "--max-new-tokens", 2, "--no-report", "--backbone", tiny_folder,
                 "--out", tmp_path)
    assert result.exit_code == 0, result.output
    pair = json.loads((tmp_path / "pairs" / "babilong__qa2__none.json").read_text())
    assert [record["length"] for record in pair["records"]] == [0] and len(pair["details"]) == 1
    assert answer_lengths == [2]  # the quick suite's 16 was overridden
    assert not (tmp_path / "results.json").exists()  # --no-report


def test_eval_recall_asks_each_user_about_each_session(run, tiny_folder, tmp_path):
    report_file = tmp_path / "recall.json"
    result = run("eval", "recall", "--users", 1, "--sessions", 2, "--filler-turns", 1, "--systems", "none,full",
                 "--window", 64, "--seed", 3, "--output", report_file, "--backbone", tiny_folder)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│")}
    assert list(rows) == ["none", "full"] and all(row[3] == "2" for row in rows.values())  # questions
    assert all(row[1].endswith("%") for row in rows.values())  # clean replies
    assert "multi-session recall: 1 users x 2 sessions" in result.stdout
    assert f"wrote {report_file}" in result.stdout
    report = json.loads(report_file.read_text())
    assert (report["users"], report["sessions"], report["window"]) == (1, 2, 64)
    assert report["command"].startswith("memlm ")
    [history] = multisession.generate(1, 2, 1, 3)
    for system in ("none", "full"):
        asked = [(row["question"], row["answer"]) for row in report["systems"][system]["rows"]]
        assert asked == [(question.question, question.answer) for question in history.questions]
        assert f"{report['systems'][system]['recall']:.1%}" == rows[system][0]


def test_eval_recall_rejects_unknown_systems(run, tiny_folder):
    result = run("eval", "recall", "--systems", "none,hippocampus", "--backbone", tiny_folder)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ConfigError: unknown contender(s) ['hippocampus']")


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. Ada keeps a telescope in the attic.\n" * 3)
    return path


def test_eval_ppl_compares_each_memory_with_the_baseline(run, tiny_folder, document):
    result = run("eval", "ppl", document, "--window", 16, "--memory", "knn-joint", "--max-tokens", 64, "--json",
                 "--backbone", tiny_folder)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == str(document) and (report["window"], report["tokens"]) == (16, 64)
    assert list(report["results"]) == ["baseline", "knn-joint"]
    assert report["memory_ppl"] == report["results"]["knn-joint"]["perplexity"]
    table = run("eval", "ppl", document, "--window", 16, "--memory", "knn-joint", "--max-tokens", 64,
                "--backbone", tiny_folder)
    assert table.exit_code == 0, table.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in table.stdout.splitlines() if line.startswith("│")}
    assert rows == {name: f"{result['perplexity']:.2f}" for name, result in report["results"].items()}


@pytest.mark.parametrize("args", [[], ["--corpus", "pg-essays"]])
def test_eval_ppl_needs_a_file_or_a_corpus(run, tiny_folder, document, args):
    result = run("eval", "ppl", *([document] if args else []), *args, "--backbone", tiny_folder)
    assert result.exit_code == 2 and "give a FILE or --corpus NAME (not both)" in result.output


def test_babilong_on_your_own_haystack_prints_accuracy_with_intervals_as_json(run, tiny_folder, tmp_path):
    import json as json_module

    haystack = tmp_path / "haystack.txt"
    haystack.write_text("The harbour town slept under a grey sky. Ships passed in the fog without a sound. " * 30)
    # No --suite: the options alone run the quick suite (the command the docs give).
    result = run("eval", "--tasks", "babilong/qa1", "--haystack", haystack, "--lengths", "0,1K",
                 "--samples", 2, "--memory", "none,recurrent", "--json", "--out", tmp_path / "out",
                 "--backbone", tiny_folder, "--window", 256)
    assert result.exit_code == 0, result.output
    table = json_module.loads(result.stdout[result.stdout.index("{"):])
    assert set(table) == {"babilong/qa1"} and set(table["babilong/qa1"]) == {"0", "1024"}
    cell = table["babilong/qa1"]["1024"]["recurrent"]
    assert cell["n"] == 2 and 0 <= cell["ci95"][0] <= cell["accuracy"] <= cell["ci95"][1] <= 1
    pair = tmp_path / "out" / "pairs" / "babilong__qa1__none.json"
    first_key = json_module.loads(pair.read_text())["key"]
    haystack.write_text("Another text altogether, about orchards and rain. " * 40)  # the same path, new words
    again = run("eval", "--suite", "quick", "--tasks", "babilong/qa1", "--haystack", haystack, "--lengths", "0,1K",
                "--samples", 2, "--memory", "none", "--json", "--out", tmp_path / "out", "--backbone", tiny_folder,
                "--window", 256)
    assert again.exit_code == 0 and json_module.loads(pair.read_text())["key"] != first_key  # recomputed
    bad = run("eval", "--suite", "quick", "--lengths", "4Q", "--backbone", tiny_folder, "--out", tmp_path / "bad")
    assert bad.exit_code != 0 and "not a length" in bad.output


def test_eval_human_adds_the_votes_to_a_report(run, tmp_path):
    from memlm.eval.human import VoteStore

    store = VoteStore(tmp_path / "votes.sqlite")
    for choice in ("A", "B", "A"):
        store.vote(store.add("ada", "a prompt", "m+bank", "m", "yes", "no").id, "ada", choice)
    store.close()
    result = run("eval", "human", "--out", tmp_path / "report", "--votes", tmp_path / "votes.sqlite")
    assert result.exit_code == 0, result.output
    assert "human evaluation: 3 votes" in result.output and "67% [" in result.output
    assert (tmp_path / "report" / "human_eval.png").is_file()
    assert "## Human evaluation" in (tmp_path / "report" / "results.md").read_text()
    missing = run("eval", "human", "--out", tmp_path / "x", "--votes", tmp_path / "none.sqlite")
    assert missing.exit_code == 2 and "no votes" in missing.output


def test_eval_chat_scores_told_and_never_told_questions_per_seed(run, tiny_folder, tmp_path):
    report_file = tmp_path / "chat.json"
    result = run("eval", "chat", "--systems", "bank", "--seeds", "0,1", "--users", 1, "--sessions", 2,
                 "--untold", 2, "--answer-tokens", 4, "--continual", 8, "--continual-questions", 2,
                 "--backbone", tiny_folder, "-o", report_file)
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    by_seed = report["systems"]["bank"]
    assert sorted(by_seed) == ["0", "1"]
    for seed in ("0", "1"):
        summary = by_seed[seed]["summary"]
        assert summary["questions"] == 2 and summary["untold_questions"] == 2
        assert {"recall", "clean_chat", "untold_says_unknown", "rougeL", "continual_recall",
                "continual_oldest"} <= set(summary)
        untold = by_seed[seed]["untold_rows"]
        assert all(row["question"].endswith("?") and "reply" in row for row in untold)
        assert len(by_seed[seed]["continual"]["rows"]) == 2
    assert "chat quality" in result.stdout and "│ mean " in result.stdout
    # reports made where no metric package is installed are rescored from their replies
    for by_seed_result in report["systems"]["bank"].values():
        by_seed_result["summary"].pop("rougeL")
    report_file.write_text(json.dumps(report))
    merged = tmp_path / "merged.json"
    rescored = run("eval", "chat", "--rescore", report_file, "-o", merged)
    assert rescored.exit_code == 0, rescored.output
    assert all("rougeL" in r["summary"] for r in json.loads(merged.read_text())["systems"]["bank"].values())


def test_lengths_read_plain_counts_and_k_and_m_suffixes():
    import typer

    from memlm.cli.eval import parse_length

    assert [parse_length(text) for text in ("4096", "4K", "16k", "1M", "10m")] == \
        [4096, 4096, 16384, 1024 ** 2, 10 * 1024 ** 2]
    for bad in ("", "K", "1.5K", "4G", "M4"):
        with pytest.raises(typer.BadParameter, match="length in tokens"):
            parse_length(bad)
