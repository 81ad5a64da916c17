"""Documents: a long text memorized into a user's key/value memory, with progress; search; delete."""

from __future__ import annotations

import json
import time

import pytest
from serverkit import BASE, bearer
from starlette.testclient import TestClient

TEXT = "The zebra Zoltan lives in Kenya near a blue lake. " * 24  # 1,200 bytes: 3 segments of 512 tokens


def wait_done(client, document_id, headers=None):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = client.get(f"/v1/documents/{document_id}", headers=headers or {}).json()
        if row["status"] not in ("queued", "running"):
            return row
        time.sleep(0.05)
    raise AssertionError("the document was not memorized in time")


@pytest.fixture
def docs_client(make_app, keys):
    with TestClient(make_app("bank", "knn-joint"), base_url=BASE) as client:
        yield client


def test_memorize_with_progress_search_and_delete(docs_client, keys, home):
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    created = docs_client.post("/v1/documents", headers=alice, json={"text": TEXT, "title": "zebras"})
    assert created.status_code == 202, created.text
    document = created.json()
    assert (document["status"], document["segments"], document["done"], document["tokens"]) == (
        "queued", 3, 0, len(TEXT.encode()))
    with docs_client.stream("GET", f"/v1/documents/{document['id']}/events", headers=alice) as events:
        rows = [json.loads(line[5:]) for line in events.iter_lines() if line.startswith("data:")]
    assert rows[-1]["status"] == "done" and rows[-1]["progress"] == 1.0
    progress = [row["progress"] for row in rows]
    assert progress == sorted(progress) and len(set(progress)) >= 2  # it moved, and never backwards
    done = docs_client.get(f"/v1/documents/{document['id']}", headers=alice).json()
    assert done["items"] == len(TEXT.encode()) and done["finished"] >= done["created"]
    assert (home / "users" / "alice" / "sessions" / "server.knn" / "knn").is_dir()  # alice's own store

    hits = docs_client.get("/v1/documents/search", headers=alice, params={"query": "Zoltan"}).json()["results"]
    assert len(hits) == 20 and {h["document_id"] for h in hits} == {document["id"]}  # 24 occurrences, 20 shown
    assert hits[0]["title"] == "zebras" and "Zoltan" in hits[0]["context"] + hits[0]["text"]
    assert docs_client.get("/v1/documents/search", headers=bob, params={"query": "Zoltan"}).json()["results"] == []
    assert docs_client.get("/v1/documents", headers=bob).json()["results"] == []
    for method in ("GET", "DELETE"):
        assert docs_client.request(method, f"/v1/documents/{document['id']}", headers=bob).status_code == 404

    listed = docs_client.get("/v1/documents", headers=alice).json()["results"]
    assert [d["id"] for d in listed] == [document["id"]]
    deleted = docs_client.delete(f"/v1/documents/{document['id']}", headers=alice)
    assert deleted.status_code == 200 and deleted.json()["deleted"] > 0
    assert docs_client.get("/v1/documents/search", headers=alice, params={"query": "Zoltan"}).json()["results"] == []
    assert docs_client.get(f"/v1/documents/{document['id']}", headers=alice).status_code == 404


def test_bad_documents_are_refused(docs_client, keys):
    alice = bearer(keys["alice"])
    for body, status, words in [({"text": ""}, 400, "empty"), ({"text": "   \n "}, 400, "empty"),
                                ({"text": "abc\x00def"}, 400, "control characters"), ({"text": 5}, 422, "text"),
                                ({"title": "x"}, 422, "text"), ({"text": "x", "title": "t" * 201}, 422, "title")]:
        response = docs_client.post("/v1/documents", headers=alice, json=body)
        assert response.status_code == status and words in response.json()["error"]["message"], response.text
    assert docs_client.get("/v1/documents/doc-0000", headers=alice).status_code == 404
    assert docs_client.get("/v1/documents/search", headers=alice, params={"query": ""}).status_code == 422
    assert docs_client.get("/v1/documents", headers=alice).json()["results"] == []


def test_document_size_is_limited(make_app):
    with TestClient(make_app("knn-joint", max_document_chars=100), base_url=BASE) as client:
        response = client.post("/v1/documents", json={"text": "word " * 100})
        assert response.status_code == 413 and "up to 100" in response.json()["error"]["message"]


def test_a_server_without_a_key_value_memory_says_how_to_get_one(client):
    response = client.post("/v1/documents", json={"text": "hello"})
    assert response.status_code == 409 and "--memory bank,knn-joint" in response.json()["error"]["message"]
    assert client.get("/v1/documents/search", params={"query": "x"}).status_code == 409
    assert client.get("/v1/server").json()["documents"] is False


def test_chats_interleave_with_a_long_document(make_app):
    with TestClient(make_app("bank", "knn-joint", segment_length=32), base_url=BASE) as client:
        document = client.post("/v1/documents", json={"text": "lorem ipsum dolor sit amet " * 40}).json()
        assert document["segments"] == 34
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                          "max_tokens": 2})
        assert chat.status_code == 200
        during = client.get(f"/v1/documents/{document['id']}").json()
        assert during["status"] in ("queued", "running") and during["done"] < during["segments"]
        assert wait_done(client, document["id"])["status"] == "done"
