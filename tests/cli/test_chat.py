"""`memlm chat` on a tiny local backbone: the loop, its /commands, sessions and the user's fact bank."""

from __future__ import annotations

import json

import pytest

from memlm.cli.chat import CHAT_HELP


def replies(stdout: str) -> list[str]:
    """What the chat printed after each `you> ` prompt, one entry per input line (and a last, empty one
    for the end of input)."""
    return [reply.strip() for reply in stdout.split("you> ")[1:]]


def test_chat_session_persists_across_two_runs(run, tiny_folder, tmp_path):
    home = tmp_path / "chat-home"
    args = ["--home", home, "chat", "--session", "demo", "--backbone", tiny_folder, "--max-new-tokens", 3]
    first = run(*args, input="hello there\n/info\n")
    assert first.exit_code == 0, first.output
    assert "resumed" not in first.output and "updates=1" in first.output
    assert (home / "sessions" / "demo" / "memory_state.safetensors").is_file()

    second = run(*args, input="again\n")
    assert second.exit_code == 0, second.output
    assert "resumed session 'demo': 1 earlier turn(s)" in second.output
    assert "updates=2" in second.output

    info = run("--home", home, "info", "--backbone", tiny_folder, "--memory", "recurrent",
               "--session", "demo", "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["memories"]["recurrent"]["state"]["updates"] == 2


def test_chat_reset_clears_memory_and_transcript(run, tiny_folder, tmp_path):
    args = ["--home", tmp_path, "chat", "--session", "r", "--backbone", tiny_folder, "--max-new-tokens", 2]
    first = run(*args, input="one\n/info\n/reset\n/info\n")
    assert first.exit_code == 0, first.output
    _, info, reset, info_after, _ = replies(first.stdout)
    assert info.startswith("recurrent: updates=1, rows=1, state_norm=") and reset == "memory and transcript cleared"
    assert info_after == "recurrent: updates=0, rows=0, state_norm=0, decay=0.95"
    assert not (tmp_path / "sessions" / "r" / "transcript.jsonl").exists()
    second = run(*args, input="/info\n")
    assert second.exit_code == 0, second.output
    assert "resumed session 'r': 0 earlier turn(s)" in second.output and "updates=1" not in second.output


def test_help_and_exit(run, tiny_folder):
    result = run("chat", "--backbone", tiny_folder, input="/help\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert CHAT_HELP in result.output and "bot>" not in result.output


def test_bank_commands_need_a_bank(run, tiny_folder):
    result = run("chat", "--backbone", tiny_folder, input="/remember I like tea.\n")
    assert result.exit_code == 0, result.output
    assert "no fact bank attached: start the chat with --user NAME or --memory bank" in result.output


def test_decoding_defaults_and_flags_reach_generate(run, tiny_folder, generate_calls):
    assert run("chat", "--backbone", tiny_folder, input="hi\n").exit_code == 0
    flags = ["--max-new-tokens", 3, "--repetition-penalty", 1.0, "--do-sample", "--temperature", 0.5, "--top-p", 0.8,
             "--top-k", 7, "--no-repeat-ngram-size", 3, "--num-beams", 2, "--seed", 9]
    assert run("chat", "--backbone", tiny_folder, *flags, input="hi\n").exit_code == 0
    defaults, flagged = (call.kwargs for call in generate_calls)
    assert {key: defaults.get(key) for key in ("max_new_tokens", "repetition_penalty", "do_sample", "num_beams")} == {
        "max_new_tokens": 128, "repetition_penalty": 1.1, "do_sample": False, "num_beams": 1}
    assert defaults["streamer"] is not None
    assert {key: flagged.get(key) for key in ("max_new_tokens", "repetition_penalty", "do_sample", "temperature",
                                              "top_p", "top_k", "no_repeat_ngram_size", "num_beams")} == {
        "max_new_tokens": 3, "repetition_penalty": 1.0, "do_sample": True, "temperature": 0.5, "top_p": 0.8,
        "top_k": 7, "no_repeat_ngram_size": 3, "num_beams": 2}
    assert flagged["streamer"] is None and generate_calls[1].seed == 9


def test_chat_with_knn_memory_persists_its_store(run, tiny_folder, tmp_path):
    args = ["--home", tmp_path, "chat", "--session", "k", "--memory", "knn-joint", "--backbone", tiny_folder,
            "--max-new-tokens", 3]
    first = run(*args, input="hello there\n")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "sessions" / "k" / "knn" / "records.sqlite").is_file()
    second = run(*args, input="/info\n")
    assert second.exit_code == 0, second.output
    assert "resumed session 'k'" in second.output and "items=" in second.output
    stats = run("--home", tmp_path, "memory", "stats", "--session", "k", "--json")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["records"] > 0
    assert json.loads(stats.stdout)["groups"][0]["session"] == "k"  # provenance set by the chat


def test_chat_with_a_user_remembers_facts_across_runs(run, tiny_folder, tmp_path):
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
    assert other.exit_code == 0, other.output
    assert "no memories yet" in other.output


@pytest.fixture
def ada(run, tiny_folder, tmp_path):
    """A chat of user ada who has told three facts; chat(*lines) runs a new chat, returns its replies."""
    def chat(*lines):
        result = run("--home", tmp_path, "chat", "--user", "ada", "--backbone", tiny_folder, "--max-new-tokens", 2,
                     input="".join(line + "\n" for line in lines))
        assert result.exit_code == 0, result.output
        return replies(result.stdout)[:-1]  # stdout: the encoder's progress bars go to stderr

    told = chat("/remember My cat is called Miso.", "/remember I was born in Lisbon.",
                "/remember I play the cello every Sunday.")
    assert told == ["stored: [1] My cat is called Miso.", "stored: [2] I was born in Lisbon.",
                    "stored: [3] I play the cello every Sunday."]
    return chat


def test_memories_query_ranks_the_facts(ada):
    [listed] = ada("/memories which instrument do I play")
    hits = listed.splitlines()
    assert len(hits) == 3 and hits[0].startswith("[3] I play the cello every Sunday.  (score ")
    scores = [float(line.rsplit("(score ", 1)[1].rstrip(")")) for line in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]


def test_forget_text_deletes_the_best_matching_fact(ada):
    forgot, unmatched, unknown, listed = ada("/forget my cat Miso", "/forget the weather on Mars", "/forget 99",
                                             "/memories")
    assert forgot == "forgot [1] My cat is called Miso."
    assert unmatched.startswith("no memory matches 'the weather on Mars' closely enough")
    assert unknown == "no memory with id 99"
    assert listed == "[2] (-) I was born in Lisbon.\n[3] (-) I play the cello every Sunday."
