"""`memlm mcp`: the transports it offers and who its HTTP transport lets in (tests/server/test_mcp.py drives
the tools through the SDK's client)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from memlm.server import KeyStore
from memlm.server.keys import keys_path

LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
def served(monkeypatch):
    import uvicorn

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: calls.update(app=app, host=host, port=port))
    return calls


def test_http_transport_without_keys_serves_loopback_only(run, tmp_path, served):
    result = run("--home", tmp_path, "mcp", "--transport", "http", "--port", 8124)
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8124/mcp" in result.output and "local user" in result.output
    with TestClient(served["app"], base_url="http://127.0.0.1") as client:
        assert client.post("/mcp", json=LIST_TOOLS, headers={**ACCEPT, "Host": "evil.example"}).status_code == 400
        listed = client.post("/mcp", json=LIST_TOOLS, headers=ACCEPT)
        assert listed.status_code == 200 and '"name":"search_memories"' in listed.text


def test_http_transport_with_keys_refuses_requests_without_one(run, tmp_path, served):
    with KeyStore(keys_path(tmp_path)) as store:
        store.create("ada")
    result = run("--home", tmp_path, "mcp", "--transport", "http", "--host", "0.0.0.0")
    assert result.exit_code == 0 and "API keys required" in result.output
    with TestClient(served["app"], base_url="http://testserver") as client:
        refused = client.post("/mcp", json=LIST_TOOLS, headers=ACCEPT)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]


def test_bad_transport_and_exposure_are_refused(run, tmp_path, served):
    assert run("--home", tmp_path, "mcp", "--transport", "carrier-pigeon").exit_code == 2
    exposed = run("--home", tmp_path, "mcp", "--transport", "http", "--host", "0.0.0.0")
    assert exposed.exit_code == 2 and "without API keys" in exposed.output and served == {}
