"""Isolation and secrets: hostile user / session / file names never reach outside the home folder
or into SQL; hostile text is stored verbatim; API keys are stored hashed and never logged; a key of
one user gets 404 for another user's ids."""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path

import pytest
from campaign import open_memory

from memlm.errors import ConfigError, MemlmError

# Names outside the safe alphabet ([A-Za-z0-9][A-Za-z0-9._-]{0,127}): every call must refuse them.
HOSTILE = ["../x", "../../etc/passwd", "a/../../b", "/abs", "..", ".", "a'; DROP TABLE facts;--",
           "x\" OR 1=1 --", "a\x00b", "~root", "a b", "\u00e9", "a" * 129, "", "-rf", ".hidden",
           "alice\n", "alice\r", "\nalice", "al\nice", "alice\t", "alice/", "alice\\x"]
# Names of the safe alphabet: every call must accept them (and still write nothing outside home).
SAFE = ["CON", "alice", "a" * 128, "A.b_c-9"]


def secret_of(key: str) -> str:
    """The secret part of `mlm-<id>-<secret>`, whole: a secret is base64url and may itself hold '-' (about
    half of them do), so `key.rsplit("-", 1)[1]` took only its tail, at times a letter or two, which the
    logs or the database then "contained" (a few runs in a hundred failed)."""
    match = re.fullmatch(r"mlm-[0-9a-f]{8}-([A-Za-z0-9_-]{43})", key)
    assert match, key
    return match.group(1)


def files_under(root: Path) -> set[str]:
    return {str(path) for path in root.rglob("*")}


def name_calls(memory, home: Path, name: str) -> dict:
    from memlm.paths import session_dir, user_dir
    from memlm.server.keys import KeyStore

    return {"add": lambda: memory.add("I like tea.", user_id=name),
            "search": lambda: memory.search("tea", user_id=name),
            "get_all": lambda: memory.get_all(user_id=name), "delete_all": lambda: memory.delete_all(user_id=name),
            "session_dir": lambda: session_dir(name, home), "user_dir": lambda: user_dir(name, home),
            "key": lambda: KeyStore(home / "keys.sqlite").create(name)}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_user_and_session_names_are_refused_by_every_call_and_write_nothing(tmp_path, name):
    home = tmp_path / "home"
    home.mkdir()
    memory = open_memory(home / "facts.sqlite")
    before = files_under(tmp_path)
    for call in name_calls(memory, home, name).values():
        with pytest.raises(ConfigError):
            call()
    memory.close()
    created = {Path(path) for path in files_under(tmp_path) - before}
    # only the two databases (and their journals) may appear: no folder or file named after the name
    assert all(path.parent == home and path.name.startswith(("facts.sqlite", "keys.sqlite")) for path in created), \
        created


@pytest.mark.parametrize("name", SAFE)
def test_safe_names_are_accepted_and_write_only_inside_home(tmp_path, name):
    home = tmp_path / "home"
    home.mkdir()
    memory = open_memory(home / "facts.sqlite")
    before = files_under(tmp_path)
    calls = name_calls(memory, home, name)
    assert calls["add"]()["results"]
    assert isinstance(calls["search"]()["results"], list) and calls["get_all"]()["results"]
    assert calls["delete_all"]()["deleted"] == 1
    assert calls["session_dir"]() == home / "sessions" / name and calls["user_dir"]() == home / "users" / name
    assert calls["key"]().startswith("mlm-")
    memory.close()
    created = files_under(tmp_path) - before
    assert created and all(path.startswith(str(home)) for path in created), created


def test_sql_looking_text_metadata_and_filters_are_data(tmp_path):
    memory = open_memory(tmp_path / "facts.sqlite")
    text = "Robert'); DROP TABLE facts;-- likes \"quotes\" % _ and ? marks"
    added = memory.add(text, user_id="alice", infer=False, metadata={"k'); DROP TABLE facts;--": "v' OR '1'='1"})
    memory.add("bob's fact", user_id="bob", infer=False)
    fact = memory.get(added["results"][0]["id"], user_id="alice")
    assert fact["memory"] == text and fact["metadata"] == {"k'); DROP TABLE facts;--": "v' OR '1'='1"}
    for filters in ({"k'); DROP TABLE facts;--": "v' OR '1'='1"}, {"user_id": "alice' OR '1'='1"},
                    {"category": "x' OR 1=1 --"}):
        try:
            hits = memory.search("likes", filters=filters, user_id="alice")["results"]
        except MemlmError:
            continue
        assert all(hit["user_id"] == "alice" for hit in hits)
    assert [f["memory"] for f in memory.get_all(user_id="bob")["results"]] == ["bob's fact"]
    memory.store.check()
    memory.close()


@pytest.mark.parametrize("draw", ["random", "dash_near_the_end"])
def test_api_keys_are_stored_hashed_and_never_logged(tmp_path, caplog, capfd, monkeypatch, draw):
    from memlm.server.keys import KeyStore

    if draw == "dash_near_the_end":  # a secret with '-' in it (one draw in two has one): checked whole
        real = secrets.token_urlsafe
        monkeypatch.setattr(secrets, "token_urlsafe", lambda size: real(size)[:-2] + "-e")
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keys.sqlite"
    with KeyStore(path) as store:
        key = store.create("alice")
        assert store.verify(key).user == "alice"
        store.list()
    secret = secret_of(key)
    assert len(secret) == 43
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in stored and key.encode() not in stored
    captured = capfd.readouterr()
    assert secret not in caplog.text and secret not in captured.out + captured.err


def test_a_key_for_one_user_gets_404_for_another_users_ids_and_keys_stay_out_of_logs(make_app, caplog, capfd):
    from serverkit import BASE, bearer
    from starlette.testclient import TestClient

    from memlm.server import KeyStore
    from memlm.server.keys import keys_path

    caplog.set_level(logging.DEBUG)
    with KeyStore(keys_path()) as store:
        keys = {"alice": store.create("alice"), "bob": store.create("bob")}
    with TestClient(make_app(), base_url=BASE) as client:
        fact = client.post("/v1/memories", headers=bearer(keys["alice"]),
                           json={"messages": "My cat is called Tom."}).json()["results"][0]["id"]
        for method, path in (("GET", f"/v1/memories/{fact}"), ("DELETE", f"/v1/memories/{fact}"),
                             ("GET", f"/v1/memories/{fact}/history")):
            assert client.request(method, path, headers=bearer(keys["bob"])).status_code == 404
        assert client.get(f"/v1/memories/{fact}", headers=bearer(keys["alice"])).status_code == 200
        for user in ("../alice", "alice'--", "..%2Fetc"):
            response = client.get("/v1/memories", params={"user_id": user}, headers=bearer(keys["bob"]))
            assert 400 <= response.status_code < 500, response.text
        response = client.get("/v1/memories/..%2F..%2Fetc%2Fpasswd", headers=bearer(keys["bob"]))
        assert 400 <= response.status_code < 500
        client.get("/v1/me", headers=bearer(keys["alice"][:-2] + "zz"))  # a wrong key, logged as refused
    captured = capfd.readouterr()
    for key in keys.values():
        secret = secret_of(key)
        assert secret not in caplog.text and secret not in captured.out + captured.err
    stored = b"".join(p.read_bytes() for p in keys_path().parent.glob("keys.sqlite*"))
    assert all(secret_of(key).encode() not in stored for key in keys.values())
