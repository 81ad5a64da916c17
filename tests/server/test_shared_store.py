"""Two servers on one PostgreSQL store (MEMLM_STORE): what one stores the other finds, users stay apart."""

from __future__ import annotations

from serverkit import BASE, bearer
from starlette.testclient import TestClient

from memlm.paths import home_dir


def test_two_servers_share_one_postgres_store_and_keep_users_apart(make_app, keys, postgres_store, monkeypatch):
    monkeypatch.setenv("MEMLM_STORE", postgres_store)
    with TestClient(make_app(), base_url=BASE) as one, TestClient(make_app(), base_url=BASE) as two:
        for server, user, text in ((one, "alice", "My dog is called Biscuit."), (two, "bob", "My dog is called Rex.")):
            response = server.post("/v1/memories", json={"messages": text}, headers=bearer(keys[user]))
            assert response.status_code == 200 and response.json()["results"][0]["event"] == "ADD", response.text
        for server, user, expected in ((two, "alice", "The user's dog is called Biscuit."),
                                       (one, "bob", "The user's dog is called Rex.")):
            found = server.post("/v1/memories/search", json={"query": "What is my dog called?", "limit": 5},
                                headers=bearer(keys[user])).json()["results"]
            assert [hit["memory"] for hit in found] == [expected]
    assert not (home_dir() / "facts.sqlite").exists()  # neither server (nor its bank) used the local file
