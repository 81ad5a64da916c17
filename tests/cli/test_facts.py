"""`memlm facts`: the per-user fact bank from the shell (no backbone: only the sentence encoder)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def facts(run, tmp_path):
    """facts("add", "text", "--user", "alice") runs `memlm --home tmp facts ...` and checks its exit status;
    returns what it printed on stdout (parsed, with --json), or on stderr if it failed."""
    def invoke(*args, status=0):
        result = run("--home", tmp_path, "facts", *args)
        assert result.exit_code == status, result.output
        if status != 0:
            return result.stderr
        return json.loads(result.stdout) if "--json" in args else result.stdout

    return invoke


def test_add_extracts_facts_from_a_message(facts):
    added = facts("add", "My locker code is 4417.", "--user", "alice")
    assert added.strip() == "ADD  [1] The user's locker code is 4417.  (importance 1.000)"
    [fact] = facts("list", "--user", "alice", "--json")
    assert (fact["id"], fact["memory"], fact["user"]) == (1, "The user's locker code is 4417.", "alice")


def test_add_raw_stores_the_text_as_it_is_with_a_category(facts):
    [added] = facts("add", "likes green tea", "--user", "alice", "--raw", "--category", "food", "--json")
    assert added["event"] == "ADD" and added["memory"] == "likes green tea"
    assert facts("add", "Hello there!", "--user", "alice").strip() == (
        "no fact found in that text (use --raw to store it as it is)")
    assert [fact["memory"] for fact in facts("list", "--user", "alice", "--category", "food", "--json")] == [
        "likes green tea"]
    assert facts("list", "--user", "alice", "--category", "sport", "--json") == []
    table = facts("list", "--user", "alice")
    row = next(line for line in table.splitlines() if "green tea" in line)
    assert [cell.strip() for cell in row.split("│")[1:4]] == [str(added["id"]), "food", "likes green tea"]


def test_users_are_kept_apart(facts):
    facts("add", "My locker code is 4417.", "--user", "alice")
    unknown = facts("search", "locker code", "--user", "bob", status=2)
    assert unknown.startswith("error: UnknownUserError: ")
    facts("add", "My locker is in the basement.", "--user", "bob")
    hits = facts("search", "locker code", "--user", "bob", "--json")
    assert hits and {hit["user"] for hit in hits} == {"bob"} and "4417" not in json.dumps(hits)
    [alice] = facts("list", "--user", "alice", "--json")
    refused = facts("delete", str(alice["id"]), "--user", "bob", status=2)
    assert refused.startswith("error: FactNotFoundError: ")  # another user's fact reads as missing
    assert len(facts("list", "--user", "alice", "--json")) == 1


def test_search_ranks_and_limits(facts):
    for text in ("likes green tea", "plays the cello", "lives in Lisbon"):
        facts("add", text, "--user", "alice", "--raw")
    hits = facts("search", "which instrument", "--user", "alice", "--json")
    assert [hit["memory"] for hit in hits][0] == "plays the cello" and len(hits) == 3
    assert [hit["memory"] for hit in facts("search", "which instrument", "--user", "alice", "--limit", 1,
                                           "--json")] == ["plays the cello"]


def test_update_keeps_the_history(facts):
    facts("add", "My locker code is 4417.", "--user", "alice")
    updated = facts("update", "1", "The user's locker code is 1234.", "--user", "alice")
    assert updated.strip() == "updated [1] The user's locker code is 1234."
    history = facts("history", "1", "--user", "alice").splitlines()
    assert len(history) == 2
    assert history[0].endswith("add       by chat: The user's locker code is 4417.")
    assert history[1].endswith("update    by api: The user's locker code is 1234.")
    changes = facts("history", "1", "--user", "alice", "--json")
    assert [(change["action"], change["old_text"], change["new_text"]) for change in changes] == [
        ("add", None, "The user's locker code is 4417."),
        ("update", "The user's locker code is 4417.", "The user's locker code is 1234.")]


def test_delete_by_id_and_all(facts):
    for text in ("likes green tea", "plays the cello", "lives in Lisbon"):
        facts("add", text, "--user", "alice", "--raw")
    assert facts("delete", "1", "2", "--user", "alice").strip() == "deleted 2 fact(s)"
    assert [fact["memory"] for fact in facts("list", "--user", "alice", "--json")] == ["lives in Lisbon"]
    assert facts("delete", "--all", "--user", "alice").strip() == "deleted 1 fact(s)"
    assert facts("list", "--user", "alice", "--json") == []


def test_the_store_is_chosen_by_url_with_store_or_memlm_store(run, tmp_path, postgres_store, monkeypatch):
    def facts_json(*args):
        result = run("--home", tmp_path, "facts", *args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    [added] = facts_json("add", "likes green tea", "--user", "ada", "--raw", "--store", postgres_store)
    assert added["event"] == "ADD"
    monkeypatch.setenv("MEMLM_STORE", postgres_store)
    assert [fact["memory"] for fact in facts_json("list", "--user", "ada")] == ["likes green tea"]
    assert not list(tmp_path.rglob("facts.sqlite"))  # nothing went to the local file
    monkeypatch.delenv("MEMLM_STORE")
    result = run("--home", tmp_path, "facts", "list", "--user", "ada", "--json")
    assert result.exit_code != 0 and "ada" in result.output  # the local store never heard of ada
