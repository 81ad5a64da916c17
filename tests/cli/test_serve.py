"""`memlm serve`: what it says at start, what it refuses, and the app it runs (uvicorn is replaced by a
recorder here; tests/server drive live servers)."""

from __future__ import annotations

import pytest
import torch
from starlette.testclient import TestClient

from memlm.server import KeyStore
from memlm.server.keys import keys_path


@pytest.fixture
def served(monkeypatch):
    """What `memlm serve` passed to uvicorn.run: {"app", "host", "port"}."""
    import uvicorn

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: calls.update(app=app, host=host, port=port))
    threads = torch.get_num_threads()
    yield calls
    torch.set_num_threads(threads)


def test_serve_runs_as_one_local_user_without_keys(run, tiny_folder, tmp_path, served):
    home = tmp_path / "home"
    result = run("--home", home, "serve", "--backbone", tiny_folder, "--memory", "bank", "--port", 8123,
                 "--max-tokens", 3, "--user", "ada", "--threads", 1, "--report", tmp_path)
    assert result.exit_code == 0, result.output
    assert "no API key configured: every request acts as the local user 'ada'" in result.output
    assert "http://127.0.0.1:8123/v1" in result.output and "MCP" in result.output
    assert "chat turns: one at a time" in result.output  # batching is off by default on CPU
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    with TestClient(served["app"], base_url="http://127.0.0.1") as client:
        assert client.get("/v1/me").json() == {"user": "ada", "role": "user", "auth": "local"}
        name = tiny_folder.name  # the backbone's name: its folder's
        # the memory-backed model first: a client that takes the first model gets the memory
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [f"{name}+bank", name]
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "I like tea."}]})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
        assert client.get("/v1/memories").json()["results"][0]["memory"] == "The user likes tea."
    assert (home / "facts.sqlite").is_file()


def test_serve_batches_chat_turns_when_asked(run, tiny_folder, tmp_path, served):
    result = run("--home", tmp_path / "home", "serve", "--backbone", tiny_folder, "--memory", "bank",
                 "--max-tokens", 3, "--threads", 1, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "chat turns: batched, up to 4 together" in result.output
    with TestClient(served["app"], base_url="http://127.0.0.1") as client:
        assert served["app"].state.engine.batcher.max_rows == 4
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "I like tea."}]})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
        assert served["app"].state.engine.batcher.peak_rows == 1  # it went through the batch


def test_serve_refuses_to_listen_beyond_loopback_without_keys(run, tmp_path, served):
    result = run("--home", tmp_path, "serve", "--host", "0.0.0.0", "--backbone", "does-not-matter")
    assert result.exit_code == 2 and "refusing to listen on 0.0.0.0 without API keys" in result.output
    assert served == {}


def test_serve_with_keys_requires_them(run, tiny_folder, tmp_path, served):
    with KeyStore(keys_path(tmp_path)) as store:
        key = store.create("ada")
    result = run("--home", tmp_path, "serve", "--host", "0.0.0.0", "--backbone", tiny_folder, "--memory", "none",
                 "--no-mcp", "--cors-origin", "https://app.example")
    assert result.exit_code == 0, result.output
    assert "API keys required (1 active)" in result.output and "MCP" not in result.output
    with TestClient(served["app"], base_url="http://testserver") as client:
        assert client.get("/v1/me").status_code == 401
        assert client.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json()["user"] == "ada"
        assert client.post("/mcp", json={}, headers={"Authorization": f"Bearer {key}"}).status_code in (404, 405)
        assert client.get("/v1/server").json()["models"] == [tiny_folder.name]
