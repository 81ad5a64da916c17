"""The memory API over HTTP: every endpoint, mem0's parameters, and bad input (clear 4xx, nothing lost)."""

from __future__ import annotations

import pytest
from serverkit import fact_ids

from memlm.facts.filters import compile_filters


def add(client, messages, **fields):
    response = client.post("/v1/memories", json={"messages": messages, **fields})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_add_search_list_get_update_history_delete(client):
    added = add(client, [{"role": "user", "content": "Hi! My dog is called Biscuit. I live in Lisbon."},
                         {"role": "assistant", "content": "Nice to meet you."}])
    assert [(r["event"], r["memory"]) for r in added] == [("ADD", "The user's dog is called Biscuit."),
                                                           ("ADD", "The user lives in Lisbon.")]
    dog, city = (r["id"] for r in added)
    assert add(client, "My dog is called Biscuit.")[0]["event"] == "NONE"  # a duplicate is not stored twice
    raw = add(client, "Paris is the capital of France.", infer=False, category="world")
    assert raw[0]["event"] == "ADD" and raw[0]["memory"] == "Paris is the capital of France."

    found = client.post("/v1/memories/search", json={"query": "What is my dog's name?", "limit": 2}).json()["results"]
    assert found[0]["id"] == dog and found[0]["score"] > found[1]["score"] and -1 <= found[0]["similarity"] <= 1
    listing = client.get("/v1/memories").json()
    assert listing["total"] == 3 and {item["id"] for item in listing["results"]} == {dog, city, raw[0]["id"]}
    assert client.get("/v1/memories", params={"limit": 1, "order": "id"}).json()["results"][0]["id"] == dog

    item = client.get(f"/v1/memories/{dog}").json()
    assert item["memory"] == "The user's dog is called Biscuit." and item["category"] == "pet"
    assert item["user_id"] == "local" and item["created_at"].endswith("+00:00") and "Biscuit" in item["source"]

    updated = client.put(f"/v1/memories/{dog}", json={"text": "The user's dog is called Rex."})
    assert updated.status_code == 200 and updated.json()["memory"] == "The user's dog is called Rex."
    history = client.get(f"/v1/memories/{dog}/history").json()["results"]
    assert [(h["event"], h["old_memory"], h["new_memory"]) for h in history] == [  # mem0's history keys
        ("ADD", None, "The user's dog is called Biscuit."),
        ("UPDATE", "The user's dog is called Biscuit.", "The user's dog is called Rex.")]
    assert history[0]["memory_id"] == dog and history[1]["is_deleted"] is False

    deleted = client.delete(f"/v1/memories/{dog}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    assert client.get(f"/v1/memories/{dog}").status_code == 404
    assert client.get(f"/v1/memories/{dog}/history").json()["results"][-1]["event"] == "DELETE"
    assert client.delete(f"/v1/memories/{dog}").status_code == 404
    gone = client.delete("/v1/memories").json()
    assert gone["deleted"] == 2 and client.get("/v1/memories").json() == {"results": [], "total": 0}


def test_mem0_scopes_metadata_and_filters(client):
    add(client, "I like jazz.", agent_id="music-bot", metadata={"topic": "music", "rank": 1})
    add(client, "I like tennis.", agent_id="sport-bot", run_id="run-7", metadata={"topic": "sport", "rank": 2})
    add(client, "I like chess.", metadata={"topic": "games", "rank": 3})

    def memories(path="/v1/memories/list", **body):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        return sorted(item["memory"] for item in response.json()["results"])

    assert memories(agent_id="music-bot") == ["The user likes jazz."]
    assert memories(run_id="run-7") == ["The user likes tennis."]
    assert memories(filters={"topic": "games"}) == ["The user likes chess."]
    assert memories(filters={"metadata": {"rank": {"gte": 2}}}) == ["The user likes chess.", "The user likes tennis."]
    assert memories(filters={"OR": [{"agent_id": "music-bot"}, {"run_id": "run-7"}]}) == [
        "The user likes jazz.", "The user likes tennis."]
    assert memories(filters={"AND": [{"category": "preference"}, {"NOT": {"topic": {"in": ["music", "sport"]}}}]}) == [
        "The user likes chess."]
    assert memories(filters={"memory": {"icontains": "TENNIS"}}) == ["The user likes tennis."]
    assert memories("/v1/memories/search", query="What do I like?", filters={"topic": {"ne": "music"}}) == [
        "The user likes chess.", "The user likes tennis."]
    assert memories("/v1/memories/search", query="sports", top_k=1, agent_id="sport-bot") == ["The user likes tennis."]
    # mem0 v2 names the user inside filters
    assert len(memories("/v1/memories/search", query="likes", filters={"user_id": "local"})) == 3
    listing = client.get("/v1/memories", params={"agent_id": "music-bot"}).json()
    get = listing["results"]
    assert [(m["agent_id"], m["metadata"]) for m in get] == [("music-bot", {"topic": "music", "rank": 1})]
    assert listing["total"] == 1  # the agent's memories, not all the user's
    assert client.post("/v1/memories/list", json={"filters": {"rank": {"gte": 2}}, "limit": 1}).json()["total"] == 2
    # metadata can be updated alone; text and scope stay
    fact = get[0]["id"]
    updated = client.put(f"/v1/memories/{fact}", json={"metadata": {"topic": "jazz"}}).json()
    assert (updated["memory"], updated["agent_id"], updated["metadata"]) == ("The user likes jazz.", "music-bot",
                                                                            {"topic": "jazz", "rank": 1})  # merged
    # deleting one agent's memories leaves the rest
    assert client.delete("/v1/memories", params={"agent_id": "sport-bot"}).json()["deleted"] == 1
    assert memories() == ["The user likes chess.", "The user likes jazz."]


@pytest.mark.parametrize("filters", [{"topic": {"regex": "x"}}, {"AND": "x"}, {"OR": [3]}, {"metadata": 3},
                                     {"topic": {}}, {"topic": {"in": "music"}}])
def test_unsupported_filters_are_named(filters):
    with pytest.raises(ValueError, match="filter"):
        compile_filters(filters)


def test_the_server_and_the_library_share_one_memory(client):
    """A memory added over HTTP is the library's row: same scope columns, same filters, no side table."""
    add(client, "I like jazz.", agent_id="music-bot", metadata={"topic": "music"})
    library = client.app.state.facts.memory
    found = library.get_all(user_id="local", filters={"AND": [{"agent_id": "music-bot"}, {"topic": "music"}]})
    assert [m["memory"] for m in found["results"]] == ["The user likes jazz."]


def test_bad_input_gets_a_clear_4xx_and_loses_nothing(client):
    kept = [r["id"] for r in add(client, "My dog is called Biscuit. I live in Lisbon.")]
    before = client.get("/v1/memories").json()["results"]
    bad = [
        ("POST", "/v1/memories", {"messages": ""}, 400, "empty"),
        ("POST", "/v1/memories", {"messages": "   "}, 400, "empty"),
        ("POST", "/v1/memories", {"messages": "I like tea. " * 20_000}, 400, "too long"),
        ("POST", "/v1/memories", {"messages": "x", "infer": False, "category": ""}, 422, "category"),
        ("POST", "/v1/memories", {"messages": 42}, 422, "messages"),
        ("POST", "/v1/memories", {"messages": [{"role": "user"}]}, 422, "content"),
        ("POST", "/v1/memories", {"messages": "I like \x00 tea."}, 400, "control characters"),
        ("POST", "/v1/memories", {"messages": "I like tea.", "metadata": "x"}, 422, "metadata"),
        ("POST", "/v1/memories", {"messages": "I like tea.", "metadata": {"k": "v" * 20_000}}, 400, "metadata"),
        ("POST", "/v1/memories", {"messages": "I like tea.", "agent_id": "../x"}, 400, "agent_id"),
        ("POST", "/v1/memories", {}, 422, "messages"),
        ("POST", "/v1/memories/search", {"query": ""}, 400, "query is empty"),
        ("POST", "/v1/memories/search", {"query": "dog", "limit": 0}, 422, "limit"),
        ("POST", "/v1/memories/search", {"query": "dog", "limit": "many"}, 422, "limit"),
        ("POST", "/v1/memories/search", {"query": "dog", "filters": {"x": {"like": 1}}}, 400, "operator"),
        ("POST", "/v1/memories/search", {"query": ["dog"]}, 422, "query"),
        ("GET", "/v1/memories/999999", None, 404, "no fact with id 999999"),
        ("GET", "/v1/memories/0", None, 404, "no memory with id 0"),
        ("GET", "/v1/memories/-5", None, 404, "no memory"),
        ("GET", "/v1/memories/abc", None, 422, "memory_id"),
        ("GET", "/v1/memories/99999999999999999999999", None, 404, "no memory"),
        ("PUT", f"/v1/memories/{kept[0]}", {"text": ""}, 400, "empty"),
        ("PUT", f"/v1/memories/{kept[0]}", {}, 400, "new text"),
        ("PUT", f"/v1/memories/{kept[0]}", {"text": 5}, 422, "text"),
        ("PUT", f"/v1/memories/{kept[0]}", {"text": "The user lives in Lisbon."}, 409, "already"),
        ("PUT", "/v1/memories/999999", {"text": "x"}, 404, "no fact"),
        ("DELETE", "/v1/memories/999999", None, 404, "no"),
        ("GET", "/v1/memories/999999/history", None, 404, "no fact"),
        ("GET", "/v1/memories", {"limit": 100_000}, 422, "limit"),
        ("GET", "/v1/memories", {"order": "random"}, 422, "order"),
    ]
    for method, path, body, status, words in bad:
        if method == "GET" and isinstance(body, dict):
            response = client.get(path, params=body)
        else:
            response = client.request(method, path, json=body)
        assert response.status_code == status, (method, path, body, response.text)
        error = response.json()["error"]
        assert words.lower() in error["message"].lower(), (path, error)
        assert set(error) == {"message", "type", "code", "param"}
    json_type = {"Content-Type": "application/json"}
    malformed = client.post("/v1/memories", content=b'{"messages": "I like', headers=json_type)
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["error"]["message"]
    not_an_object = client.post("/v1/memories", content=b"[1, 2]", headers=json_type)
    assert not_an_object.status_code == 422
    unknown_route = client.get("/v1/nothing")
    assert unknown_route.status_code == 404 and unknown_route.json()["error"]["message"] == "Not Found"
    assert client.patch("/v1/memories/1", json={}).status_code == 405
    assert client.get("/v1/memories").json()["results"] == before  # nothing lost, nothing changed
    assert fact_ids(client) == sorted(kept)


def test_a_user_without_memories_lists_and_searches_empty(client):
    assert client.get("/v1/memories").json() == {"results": [], "total": 0}
    assert client.post("/v1/memories/search", json={"query": "anything"}).json()["results"] == []
    assert client.delete("/v1/memories").json()["deleted"] == 0


def test_an_older_servers_metadata_is_adopted_once(tmp_path):
    import sqlite3

    from helpers import words_memory

    from memlm.server.facts import FactsAdapter

    memory = words_memory(tmp_path / "facts.sqlite")
    fact = memory.add("I like jazz.", user_id="alice")["results"][0]["id"]
    with sqlite3.connect(tmp_path / "server.sqlite") as old:  # the side table servers kept before
        old.execute("CREATE TABLE fact_scopes (fact_id INTEGER PRIMARY KEY, user TEXT, agent_id TEXT, run_id TEXT, "
                    "metadata TEXT)")
        old.execute("INSERT INTO fact_scopes VALUES (?, 'alice', NULL, NULL, '{\"topic\": \"music\"}')", (fact,))
        old.execute("INSERT INTO fact_scopes VALUES (999, 'alice', NULL, NULL, '{\"topic\": \"gone\"}')")
    adapter = FactsAdapter(memory, tmp_path / "server.sqlite")
    assert adapter.get("alice", fact)["metadata"] == {"topic": "music"}
    with sqlite3.connect(tmp_path / "server.sqlite") as old:
        assert old.execute("SELECT 1 FROM sqlite_master WHERE name = 'fact_scopes'").fetchone() is None
