"""What a chat turn writes to the fact store, and when: one transaction (one fsync) per turn that
learns, holding the facts it learned and the touches of the facts it used; nothing held back past
the answer."""

from __future__ import annotations

from serverkit import BASE
from starlette.testclient import TestClient


def _commits(store, turn):
    statements: list[str] = []
    store.connection.raw.set_trace_callback(statements.append)
    try:
        response = turn()
    finally:
        store.connection.raw.set_trace_callback(None)
    return response, sum(statement.strip().upper() == "COMMIT" for statement in statements)


def _chat(client, text, **extra):
    response = client.post("/v1/chat/completions", json={"model": "tiny-llama+bank", "max_tokens": 3,
                                                          "messages": [{"role": "user", "content": text}], **extra})
    assert response.status_code == 200, response.text
    return response.json()["memlm"]


def test_a_chat_turn_is_one_transaction_with_what_it_learned_and_used(make_app):
    with TestClient(make_app("bank"), base_url=BASE) as client:
        store = client.app.state.engine.model.memories["bank"].store
        _chat(client, "My sister Maria lives in Porto.")
        told, commits = _commits(store, lambda: _chat(client, "My sister Maria lives in Porto. I work as a baker."))
        assert [m["event"] for m in told["learned"]] == ["NONE", "ADD"] and told["memories"]
        assert commits == 1  # the touch of the used fact and the new fact: one fsync
        used = told["memories"][0]["id"]
        assert store.get(used, "local").use_count == 1
        asked, commits = _commits(store, lambda: _chat(client, "Where does my sister live?"))
        assert asked["learned"] == [] and asked["memories"] and commits == 1
        assert store.get(used, "local").use_count == 2  # written before the answer
        assert asked["timings"]["memory_write_ms"] > 0  # that write is timed as the turn's memory work


def test_a_turn_that_does_not_learn_still_marks_what_it_used(make_app):
    with TestClient(make_app("bank"), base_url=BASE) as client:
        store = client.app.state.engine.model.memories["bank"].store
        _chat(client, "My sister Maria lives in Porto.")
        asked = _chat(client, "Where does my sister live?", memlm={"learn": False})
        assert asked["timings"]["memory_write_ms"] == 0
        assert store.get(asked["memories"][0]["id"], "local").use_count == 1
