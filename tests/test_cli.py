"""The `memlm` command line on a tiny local backbone."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from memlm.cli import app

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_generate_continues_the_prompt(tiny_folder):
    result = run("generate", "hello", "--backbone", tiny_folder, "--max-new-tokens", 5, "--no-stream")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("hello")


@pytest.mark.parametrize("flags", [
    ["--do-sample", "--temperature", 0.7, "--top-p", 0.9, "--top-k", 20, "--seed", 3],
    ["--repetition-penalty", 1.3, "--no-repeat-ngram-size", 2],
    ["--num-beams", 3],
    ["--chat", "--memory", "recurrent"],
])
def test_generate_accepts_every_decoding_option(tiny_folder, flags):
    result = run("generate", "hello", "--backbone", tiny_folder, "--max-new-tokens", 4, *flags)
    assert result.exit_code == 0, result.output


def test_sampling_is_reproducible_with_a_seed(tiny_folder):
    args = ["generate", "abc", "--backbone", tiny_folder, "--max-new-tokens", 12, "--do-sample",
            "--no-stream", "--seed"]
    first, second, other = run(*args, 1), run(*args, 1), run(*args, 2)
    assert first.output == second.output
    assert first.output != other.output


def test_typed_errors_are_one_line_with_status_2(tiny_folder):
    result = run("generate", "hi", "--backbone", tiny_folder, "--memory", "hippocampus")
    assert result.exit_code == 2
    assert "UnknownMechanismError" in result.output and "Traceback" not in result.output
    assert run("generate", "  ", "--backbone", tiny_folder).exit_code != 0


def test_info_lists_backbone_memories_and_parameter_counts(tiny_folder):
    result = run("info", "--backbone", tiny_folder, "--memory", "recurrent", "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["backbone"]["hidden_size"] == 32 and described["backbone"]["num_layers"] == 2
    assert described["memories"]["recurrent"]["parameters"] > 0
    assert "recurrent" in described["available_mechanisms"]
    table = run("info", "--backbone", tiny_folder, "--memory", "recurrent")
    assert "memory: recurrent" in table.output


def test_chat_session_persists_across_two_runs(tiny_folder, tmp_path):
    home = tmp_path / "chat-home"
    args = ["--home", home, "chat", "--session", "demo", "--backbone", tiny_folder, "--max-new-tokens", 3]
    first = run(*args, input="hello there\n/info\n")
    assert first.exit_code == 0, first.output
    assert "updates=1" in first.output
    assert (home / "sessions" / "demo" / "memory_state.safetensors").is_file()

    second = run(*args, input="again\n")
    assert second.exit_code == 0, second.output
    assert "resumed session 'demo': 1 earlier turn(s)" in second.output
    assert "updates=2" in second.output

    info = run("--home", home, "info", "--backbone", tiny_folder, "--memory", "recurrent",
               "--session", "demo", "--json")
    assert json.loads(info.output)["memories"]["recurrent"]["state"]["updates"] == 2


def test_chat_reset_command(tiny_folder, tmp_path):
    args = ["--home", tmp_path, "chat", "--session", "r", "--backbone", tiny_folder, "--max-new-tokens", 2]
    run(*args, input="one\n/reset\n")
    result = run(*args, input="/info\n")
    assert "resumed" not in result.output or "0 earlier turn(s)" in result.output
    assert "updates=0" in result.output


def test_chat_with_knn_memory_persists_its_store(tiny_folder, tmp_path):
    args = ["--home", tmp_path, "chat", "--session", "k", "--memory", "knn-joint", "--backbone", tiny_folder,
            "--max-new-tokens", 3]
    first = run(*args, input="hello there\n")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "sessions" / "k" / "knn" / "records.sqlite").is_file()
    second = run(*args, input="/info\n")
    assert "resumed session 'k'" in second.output and "items=" in second.output
    stats = run("--home", tmp_path, "memory", "stats", "--session", "k", "--json")
    assert json.loads(stats.output)["records"] > 0
    assert json.loads(stats.output)["groups"][0]["session"] == "k"  # provenance set by the chat


def test_facts_commands_keep_users_apart(tmp_path):
    home = ["--home", tmp_path]
    added = run(*home, "facts", "add", "My locker code is 4417.", "--user", "alice")
    assert added.exit_code == 0, added.output
    assert "ADD" in added.output and "The user's locker code is 4417." in added.output
    unknown = run(*home, "facts", "search", "locker code", "--user", "bob")
    assert unknown.exit_code == 2 and "UnknownUserError" in unknown.output
    run(*home, "facts", "add", "My locker is in the basement.", "--user", "bob")
    hits = json.loads(run(*home, "facts", "search", "locker code", "--user", "bob", "--json").output)
    assert hits and {hit["user"] for hit in hits} == {"bob"} and "4417" not in json.dumps(hits)
    alice = json.loads(run(*home, "facts", "list", "--user", "alice", "--json").output)
    refused = run(*home, "facts", "delete", str(alice[0]["id"]), "--user", "bob")
    assert "deleted 0 fact(s)" in refused.output
    assert len(json.loads(run(*home, "facts", "list", "--user", "alice", "--json").output)) == 1
    run(*home, "facts", "update", str(alice[0]["id"]), "The user's locker code is 1234.", "--user", "alice")
    history = run(*home, "facts", "history", str(alice[0]["id"]), "--user", "alice")
    assert "add" in history.output and "update" in history.output and "1234" in history.output


def test_chat_with_a_user_remembers_facts_across_runs(tiny_folder, tmp_path):
    args = ["--home", tmp_path, "chat", "--user", "ada", "--backbone", tiny_folder, "--max-new-tokens", 3,
            "--show-memory"]
    first = run(*args, input="Hi! My cat is called Miso.\n/remember I was born in 1990.\n")
    assert first.exit_code == 0, first.output
    assert "learned: stored The user's cat is called Miso." in first.output
    assert "stored: [2] I was born in 1990." in first.output
    second = run(*args, input="What is my cat called?\n/memories\n/forget 2\n/memories\n")
    assert second.exit_code == 0, second.output
    assert "resumed session 'default': 1 earlier turn(s)" in second.output
    assert "used [1] The user's cat is called Miso." in second.output
    assert "forgot [2] I was born in 1990." in second.output
    assert second.output.count("[2] (-) I was born in 1990.") == 1  # listed before /forget, not after
    other = run("--home", tmp_path, "chat", "--user", "bob", "--backbone", tiny_folder, "--max-new-tokens", 2,
                input="/memories\n")
    assert "no memories yet" in other.output


def test_eval_suite_settings_can_be_overridden_from_the_command_line(tiny_folder, tmp_path, monkeypatch):
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
