"""Who may do what: keys, users, admins, the local mode, and the checks every request passes."""

from __future__ import annotations

import pytest
from serverkit import BASE, bearer, fact_ids
from starlette.testclient import TestClient

from memlm.errors import ConfigError
from memlm.server import KeyStore
from memlm.server.auth import check_exposure
from memlm.server.keys import keys_path

PROTECTED = [("GET", "/v1/models"), ("GET", "/v1/memories"), ("POST", "/v1/memories/search"),
             ("POST", "/v1/chat/completions"), ("GET", "/v1/documents"), ("GET", "/v1/eval/summary"),
             ("GET", "/v1/report"), ("GET", "/v1/me"), ("POST", "/mcp")]


def test_keys_mode_refuses_requests_without_a_valid_key(keyed_client, keys):
    for method, path in PROTECTED:
        for headers in ({}, bearer("mlm-00000000-" + "x" * 43), {"Authorization": "Basic abc"}):
            response = keyed_client.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "memlm keys create" in response.json()["error"]["message"]
    assert keyed_client.get("/v1/me", headers=bearer(keys["alice"])).json()["user"] == "alice"


def test_the_page_and_server_info_need_no_key(keyed_client):
    assert keyed_client.get("/").status_code == 200
    assert keyed_client.get("/openapi.json").json()["info"]["title"] == "memlm"
    assert keyed_client.get("/docs").status_code == 404  # FastAPI's page would load scripts from a CDN
    assert keyed_client.get("/static/app.js").status_code == 200
    info = keyed_client.get("/v1/server").json()
    assert info["auth"] == "keys" and info["default_model"] == "tiny-llama+bank+recurrent"


def test_a_revoked_key_stops_working_on_a_running_server(keyed_client, keys):
    assert keyed_client.get("/v1/me", headers=bearer(keys["bob"])).status_code == 200
    with KeyStore(keys_path()) as store:
        store.revoke(user="bob")
    assert keyed_client.get("/v1/me", headers=bearer(keys["bob"])).status_code == 401


def test_other_key_forms_are_accepted(keyed_client, keys):
    for headers in ({"X-API-Key": keys["alice"]}, {"Authorization": f"Token {keys['alice']}"}):
        assert keyed_client.get("/v1/me", headers=headers).json()["user"] == "alice"


def test_a_user_key_never_reaches_another_users_memories(keyed_client, keys):
    alice, bob, root = bearer(keys["alice"]), bearer(keys["bob"]), bearer(keys["root"])
    added = keyed_client.post("/v1/memories", headers=alice, json={"messages": "My cat is called Tom."})
    fact = added.json()["results"][0]["id"]
    # bob cannot see, search, change, delete or trace alice's fact: 404 as for ids that do not exist
    for method, path in (("GET", f"/v1/memories/{fact}"), ("PUT", f"/v1/memories/{fact}"),
                         ("DELETE", f"/v1/memories/{fact}"), ("GET", f"/v1/memories/{fact}/history")):
        response = keyed_client.request(method, path, headers=bob, json={"text": "x"} if method == "PUT" else None)
        missing = keyed_client.request(method, "/v1/memories/999999", headers=bob,
                                       json={"text": "x"} if method == "PUT" else None)
        assert response.status_code == missing.status_code == 404, response.text
        assert response.json()["error"]["message"].replace(str(fact), "N") == \
            missing.json()["error"]["message"].replace("999999", "N")
    # naming alice as the user: 404, the same as naming a user that does not exist
    for user in ("alice", "nobody"):
        for method, path in (("GET", f"/v1/memories?user_id={user}"), ("DELETE", f"/v1/memories?user_id={user}")):
            response = keyed_client.request(method, path, headers=bob)
            assert response.status_code == 404 and response.json()["error"]["message"] == f"user {user!r} not found"
        searched = keyed_client.post("/v1/memories/search", headers=bob, json={"query": "cat", "user_id": user})
        assert searched.status_code == 404
        chat = keyed_client.post("/v1/chat/completions", headers=bob,
                                 json={"messages": [{"role": "user", "content": "hi"}], "user": user})
        assert chat.status_code == 404
    assert keyed_client.post("/v1/memories/search", headers=bob, json={"query": "cat"}).json()["results"] == []
    assert fact_ids(keyed_client, alice) == [fact]
    # an admin key acts for whoever it names
    assert fact_ids(keyed_client, root, user_id="alice") == [fact]
    assert keyed_client.get(f"/v1/memories/{fact}", headers=root, params={"user_id": "alice"}).status_code == 200
    assert keyed_client.get(f"/v1/memories/{fact}", headers=root).status_code == 404  # root's own memories


def test_user_names_are_validated(keyed_client, keys, home):
    root = bearer(keys["root"])
    for user in ("../alice", "a/b", "..", "x" * 129, "-x", "a b", "a\x00b"):
        response = keyed_client.get("/v1/memories", headers=root, params={"user_id": user})
        assert response.status_code in (400, 422), response.text
        assert "user" in response.json()["error"]["message"]
        chat = keyed_client.post("/v1/chat/completions", headers=root,
                                 json={"messages": [{"role": "user", "content": "hi"}], "user": user})
        assert chat.status_code in (400, 422), chat.text
    assert not (home / "users").exists() or sorted(p.name for p in (home / "users").iterdir()) == []


def test_local_mode_acts_as_one_user_and_answers_loopback_names_only(make_app):
    app = make_app(local_user="me")
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/v1/me").json() == {"user": "me", "role": "user", "auth": "local"}
        assert client.get("/v1/me", headers=bearer("anything")).json()["user"] == "me"  # keys are not checked
        assert client.get("/v1/memories", params={"user_id": "other"}).status_code == 404
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert client.get("/v1/me", headers={"Host": host}).status_code == 200
        rebound = client.get("/v1/me", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400 and "Host" in rebound.json()["error"]["message"]


def test_cross_site_writes_are_refused_and_cors_is_off_by_default(client):
    same = client.post("/v1/memories", json={"messages": "I like tea."}, headers={"Origin": "http://127.0.0.1"})
    assert same.status_code == 200
    foreign = client.post("/v1/memories", json={"messages": "I like coffee."}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "cross-site" in foreign.json()["error"]["message"]
    form = client.post("/v1/memories", content=b"messages=x", headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    preflight = client.options("/v1/memories", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    page = client.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert [item["memory"] for item in client.get("/v1/memories").json()["results"]] == ["The user likes tea."]


def test_cors_can_allow_an_origin(make_app):
    with TestClient(make_app(cors_origins=["https://app.example"]), base_url=BASE) as client:
        preflight = client.options("/v1/memories", headers={"Origin": "https://app.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        posted = client.post("/v1/memories", json={"messages": "I like tea."}, headers={"Origin": "https://app.example"})
        assert posted.status_code == 200


def test_request_size_is_limited(make_app):
    with TestClient(make_app(max_body_bytes=10_000, max_document_chars=1000), base_url=BASE) as client:
        huge = client.post("/v1/memories", json={"messages": "I like tea. " * 2000})
        assert huge.status_code == 413 and "too large" in huge.json()["error"]["message"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(20):
                yield b" " * 1000

        streamed = client.post("/v1/memories", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert client.get("/v1/memories").json()["results"] == []


def test_a_server_reachable_from_elsewhere_needs_keys(tmp_path):
    with KeyStore(tmp_path / "keys.sqlite") as store:
        assert check_exposure("127.0.0.1", store) == "local" and check_exposure("::1", store) == "local"
        with pytest.raises(ConfigError, match="without API keys"):
            check_exposure("0.0.0.0", store)
        store.create("alice")
        assert check_exposure("0.0.0.0", store) == "keys" and check_exposure("127.0.0.1", store) == "keys"
