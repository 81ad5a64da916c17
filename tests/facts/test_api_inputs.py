"""`memlm.Memory` (FactMemory) at its edges, with no language model: how messages are read, each
input error named, expiry, whose memories a call names, filters combined with a scope, and the
mem0-shaped add events and history records."""

from __future__ import annotations

import re

import pytest
from helpers import Clock, words_memory

import memlm
from memlm.facts.api import MAX_SOURCE_CHARS, _as_messages, _count, _threshold


def test_messages_are_read_as_role_content_and_name():
    assert _as_messages("I live in Oslo.") == [("user", "I live in Oslo.", None)]
    assert _as_messages({"content": "hello"}) == [("user", "hello", None)]  # one dict; the role defaults to user
    assert _as_messages([{"role": "assistant", "content": " hi ", "name": "bot"},
                         {"role": "user", "content": "I keep bees."}]) == [("assistant", "hi", "bot"),
                                                                          ("user", "I keep bees.", None)]
    assert len(_as_messages("x" * MAX_SOURCE_CHARS)[0][1]) == MAX_SOURCE_CHARS  # a long message, up to the limit
    assert len(_as_messages([{"content": "x" * MAX_SOURCE_CHARS}])[0][1]) == MAX_SOURCE_CHARS  # longer than a fact


@pytest.mark.parametrize("messages, message", [
    (42, "messages must be text (str), a message dict or a list of them, got int"),
    ([{"role": "user"}], "each message must be a dict with 'role' and 'content', got {'role': 'user'}"),
    (["hello"], "each message must be a dict with 'role' and 'content', got 'hello'"),
    ([{"role": 1, "content": "x"}], "a message's role and name must be strings, got {'role': 1, 'content': 'x'}"),
    ([{"content": "x", "name": 2}], "a message's role and name must be strings, got {'content': 'x', 'name': 2}"),
    ([{"content": "   "}], "message is empty"),
    ("   ", "message is empty"),
    ("x" * (MAX_SOURCE_CHARS + 1), "message is too long"),
    ([{"content": "x" * (MAX_SOURCE_CHARS + 1)}], "message is too long"),
])
def test_each_bad_message_is_refused_by_name(messages, message):
    with pytest.raises(memlm.ConfigError, match="^" + re.escape(message)):
        _as_messages(messages)


def test_counts_and_thresholds_are_checked_and_defaulted():
    assert _count(None, None, 7) == 7 and _count(3, None, 7) == 3 and _count(None, 4, 7) == 4 and _count(5, 5, 7) == 5
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(memlm.ConfigError, match=rf"^limit / top_k must be a positive integer, got {bad!r}$"):
            _count(bad, None, 7)
    with pytest.raises(memlm.ConfigError, match="^give limit or top_k, not both$"):
        _count(3, 4, 7)
    assert _threshold(None, None) is None and _threshold(-1, None) == -1.0 and _threshold(None, 10) == 10.0
    for bad in (-1.01, 10.5, True, "0.3"):
        with pytest.raises(memlm.ConfigError, match=r"^threshold must be a number within \[-1, 10\], got "):
            _threshold(bad, None)
    with pytest.raises(memlm.ConfigError, match="^give threshold or min_similarity, not both$"):
        _threshold(0.1, 0.2)


def test_an_expiry_is_given_one_way_and_checked():
    memory = words_memory()
    memory.store.clock = Clock(1_000_000.0)
    added = memory.add("The door code is 4411.", user_id="ada", ttl=0.5, infer=False)["results"][0]
    assert memory.store.get(added["id"]).expires_at == pytest.approx(1_000_000.5, abs=1e-6)  # a ttl under a second
    dated = memory.add("The boat leaves at noon.", user_id="ada", expiration_date="2031-01-02", infer=False)
    assert memory.store.get(dated["results"][0]["id"]).expires_at is not None
    with pytest.raises(memlm.ConfigError, match="^give one of expires_at, ttl and expiration_date$"):
        memory.add("x y z", user_id="ada", ttl=5, expiration_date="2031-01-02")
    with pytest.raises(memlm.ConfigError, match="^give one of expires_at, ttl and expiration_date$"):
        memory.add("x y z", user_id="ada", ttl=5, expires_at=2_000_000_000.0, expiration_date="2031-01-02")
    for bad in (0, -3, True, "60"):
        with pytest.raises(memlm.ConfigError, match=rf"^ttl must be a positive number of seconds, got {bad!r}$"):
            memory.add("x y z", user_id="ada", ttl=bad)
    with pytest.raises(memlm.ConfigError, match="^expires_at 'not a date' is not an ISO 8601 date or time$"):
        memory.add("x y z", user_id="ada", expiration_date="not a date")


def test_whose_memories_a_call_names_and_the_errors_that_say_so():
    memory = words_memory()
    memory.add("I keep bees in Tartu.", user_id="ada", infer=False)
    memory.add("Runs on Tuesdays.", run_id="r1", infer=False)
    assert len(memory.get_all(filters={"AND": [{"user_id": "ada"}]})["results"]) == 1  # mem0's AND form
    assert [m["memory"] for m in memory.get_all(filters={"run_id": "r1"})["results"]] == ["Runs on Tuesdays."]
    with pytest.raises(memlm.ConfigError, match="^" + re.escape(
            "filters['user_id'] must be one user id (a string): memlm searches one user at a time")):
        memory.get_all(filters={"user_id": ["ada", "bob"]})
    with pytest.raises(memlm.ConfigError, match="^" + re.escape("say whose memories: user_id= (or user=), agent_id= "
                                                                "or run_id=")):
        memory.get_all()
    with pytest.raises(memlm.ConfigError, match=r"\buser id\b"):
        memory.get_all(user_id="not a name!")
    for kind in ("agent_id", "run_id"):
        with pytest.raises(memlm.ConfigError, match=rf"^invalid {kind} 'not a name!'"):
            memory.get_all(**{kind: "not a name!"})
        with pytest.raises(memlm.ConfigError, match=rf"^invalid {kind} '{kind[:-3]}\.a{{125}}'"):  # valid alone,
            memory.get_all(**{kind: "a" * 125})  # too long with its "agent." or "run." prefix


def test_scopes_with_dots_and_users_named_like_scopes_are_kept_apart():
    memory = words_memory()
    memory.add("I book window seats.", user_id="ada", agent_id="travel.eu", infer=False)
    with pytest.raises(memlm.ConfigError, match=r"^agent_id 'travel\.eu' has no memories of its own"):
        memory.get_all(agent_id="travel.eu")
    memory.add("I book aisle seats.", user_id="ada", agent_id="travel", infer=False)
    assert memory.get_all(user_id="agent.travel")["results"] == []  # a user so named, with nothing: no refusal
    assert memory.search("seats", user_id="agent.travel")["results"] == []
    assert memory.get_all(user="agent.travel")["results"] == []  # named by mem0's `user` or in the filters
    assert memory.get_all(filters={"user_id": "agent.travel"})["results"] == []


def test_a_memory_record_names_its_user_metadata_and_last_update():
    memory = words_memory()
    memory.store.clock = Clock(1_700_000_000.0)
    memory.add("I book window seats.", user_id="ada", agent_id="travel", infer=False)
    memory.add("Always answer in French.", run_id="r1", infer=False)
    [ada] = memory.get_all(user_id="ada", agent_id="travel")["results"]
    assert ada["user_id"] == "ada" and ada["metadata"] == {}  # a user's memory of an agent is still the user's
    [run] = memory.get_all(run_id="r1")["results"]
    assert run["user_id"] is None  # the run's own
    assert ada["updated_at"] == ada["created_at"] == "2023-11-14T22:13:20+00:00"
    memory.store.clock.now += 60
    memory.update(ada["id"], "I book aisle seats.", user_id="ada")
    updated = memory.get(ada["id"], user_id="ada")
    assert updated["created_at"] == "2023-11-14T22:13:20+00:00" and updated["updated_at"] == "2023-11-14T22:14:20+00:00"


def test_an_add_that_stores_nothing_says_why():
    memory = words_memory(min_importance=2.0, importance="constant")
    [event] = memory.add("The user keeps bees.", user_id="ada", infer=False)["results"]
    assert event["event"] == "NONE" and event["id"] is None and event["memory"] is None
    assert event["reason"].startswith("importance 1.000 is below min_importance 2.0")


def test_filters_and_a_scope_must_both_hold():
    memory = words_memory()
    memory.add("I book window seats.", user_id="ada", agent_id="travel", metadata={"kind": "seat"}, infer=False)
    memory.add("I book aisle seats at the opera.", user_id="ada", agent_id="culture", metadata={"kind": "seat"},
               infer=False)
    memory.add("I pack light.", user_id="ada", agent_id="travel", metadata={"kind": "bag"}, infer=False)
    memory.add("Runs late.", user_id="ada", run_id="r9", metadata={"kind": "seat"}, infer=False)
    seats = memory.get_all(user_id="ada", agent_id="travel", filters={"kind": "seat"})["results"]
    assert [m["memory"] for m in seats] == ["I book window seats."]
    assert [m["memory"] for m in memory.get_all(user_id="ada", run_id="r9")["results"]] == ["Runs late."]
    named = memory.get_all(filters={"user_id": "ada", "kind": "bag"})["results"]  # user_id is whose, not a field
    assert [m["memory"] for m in named] == ["I pack light."]


def test_add_events_and_history_records_speak_mem0():
    memory = words_memory()
    memory.store.clock = Clock(1_700_000_000.0)
    first = memory.add([{"role": "user", "content": "My dog is called Rex.", "name": "ada-phone"}],
                       user_id="ada")["results"]
    assert [(e["event"], e["role"], e["actor_id"]) for e in first] == [("ADD", "user", "ada-phone")]
    assert first[0]["memory"] and isinstance(first[0]["id"], int) and "previous_memory" not in first[0]
    again = memory.add("My dog is called Rex.", user_id="ada")["results"]
    assert [(e["event"], e["id"], e["memory"]) for e in again] == [("NONE", first[0]["id"], first[0]["memory"])]
    renamed = memory.add("My dog is called Bruno.", user_id="ada")["results"]
    assert [e["event"] for e in renamed] == ["UPDATE"]
    assert renamed[0]["previous_ids"] == [first[0]["id"]] and "Rex" in renamed[0]["previous_memory"]
    history = memory.history(first[0]["id"], user_id="ada")
    assert [h["event"] for h in history] == ["ADD", "SUPERSEDE"]
    record = history[0]
    assert record["memory_id"] == first[0]["id"] and record["created_at"] == record["updated_at"]
    assert record["created_at"].startswith("2023-11-14T22:13:20") and record["is_deleted"] is False
    assert record["actor_id"] == record["actor"] and record["role"] is None
    memory.delete(renamed[0]["id"], user_id="ada")
    deleted = memory.history(renamed[0]["id"], user_id="ada")[-1]
    assert deleted["event"] == "DELETE" and deleted["is_deleted"] is True
