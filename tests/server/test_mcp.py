"""MCP tools, driven by the official SDK's own client: in process, over streamable HTTP (the server's /mcp,
with API keys) and over stdio (`memlm mcp` as a subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from memlm.cli.mcp import _stdio_principal
from memlm.errors import ConfigError
from memlm.facts import FactMemory
from memlm.paths import facts_path, home_dir
from memlm.server import KeyStore, Principal
from memlm.server.facts import FactsAdapter
from memlm.server.keys import keys_path
from memlm.server.mcp import create_mcp

FACT_TOOLS = {"add_memory", "search_memories", "list_memories", "get_memory", "update_memory", "delete_memory",
              "delete_all_memories", "memory_history"}
DOCUMENT_TOOLS = {"memorize_document", "list_documents", "search_documents", "delete_document"}
SRC = Path(__file__).resolve().parents[2] / "src"


def data(result) -> dict:
    """A tool's answer: its structured content, or the JSON of its text."""
    assert not result.is_error, result.content
    return result.structured_content if result.structured_content is not None else json.loads(result.content[0].text)


async def exercise_fact_tools(client: Client) -> None:
    """Every fact tool once, through `client`, acting for the user the connection is bound to."""
    assert {tool.name for tool in (await client.list_tools()).tools} >= FACT_TOOLS
    added = data(await client.call_tool("add_memory", {"messages": "My dog is called Biscuit. I live in Lisbon.",
                                                       "agent_id": "helper", "metadata": {"from": "mcp"}}))
    dog, city = (r["id"] for r in added["results"])
    found = data(await client.call_tool("search_memories", {"query": "What is my dog's name?", "limit": 1}))
    assert [r["id"] for r in found["results"]] == [dog]
    listed = data(await client.call_tool("list_memories", {"agent_id": "helper"}))
    assert sorted(r["id"] for r in listed["results"]) == sorted([dog, city])
    assert data(await client.call_tool("get_memory", {"memory_id": dog}))["metadata"] == {"from": "mcp"}
    updated = data(await client.call_tool("update_memory", {"memory_id": dog, "text": "The user's dog is Rex."}))
    assert updated["memory"] == "The user's dog is Rex."
    history = data(await client.call_tool("memory_history", {"memory_id": dog}))["results"]
    assert [h["action"] for h in history] == ["add", "update"]
    assert data(await client.call_tool("delete_memory", {"memory_id": dog}))["deleted"] == 1
    missing = await client.call_tool("get_memory", {"memory_id": dog})
    assert missing.is_error and "no fact with id" in missing.content[0].text
    wrong = await client.call_tool("add_memory", {"messages": ""})
    assert wrong.is_error and "empty" in wrong.content[0].text
    assert data(await client.call_tool("delete_all_memories", {}))["deleted"] == 1


def test_fact_tools_in_process(tmp_path):
    adapter = FactsAdapter(FactMemory(tmp_path / "facts.sqlite"), tmp_path / "server.sqlite")
    server = create_mcp(adapter, lambda _ctx: Principal(user="ada", role="user"))

    async def main() -> None:
        async with Client(server) as client:
            await exercise_fact_tools(client)
            other = await client.call_tool("list_memories", {"user_id": "bob"})
            assert other.is_error and "not found" in other.content[0].text
            assert not {tool.name for tool in (await client.list_tools()).tools} & DOCUMENT_TOOLS

    asyncio.run(main())
    adapter.close()


def test_tools_over_http_use_the_requests_key(live, keys):
    async def connect(url: str, key: str | None) -> Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return Client(streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(headers=headers)))

    async def main(url: str) -> None:
        async with await connect(url, keys["alice"]) as alice:
            await exercise_fact_tools(alice)
            data(await alice.call_tool("add_memory", {"messages": "My cat is called Tom."}))
            assert {tool.name for tool in (await alice.list_tools()).tools} >= DOCUMENT_TOOLS
            progress = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append((done, total))

            document = data(await alice.call_tool("memorize_document", {"text": "Zebras live in Kenya. " * 30,
                                                                         "title": "zebras"},
                                                  progress_callback=on_progress))
            assert document["status"] == "done" and document["done"] == document["segments"] == 2
            assert progress and progress[-1] == (2, 2)
            hits = data(await alice.call_tool("search_documents", {"query": "Kenya"}))["results"]
            assert hits and hits[0]["document_id"] == document["id"]
            assert [d["id"] for d in data(await alice.call_tool("list_documents", {}))["results"]] == [document["id"]]
            assert data(await alice.call_tool("delete_document", {"document_id": document["id"]}))["deleted"] > 0
        async with await connect(url, keys["bob"]) as bob:
            assert data(await bob.call_tool("list_memories", {}))["results"] == []
            theirs = await bob.call_tool("list_memories", {"user_id": "alice"})
            assert theirs.is_error and "not found" in theirs.content[0].text
        async with await connect(url, keys["root"]) as root:
            cats = data(await root.call_tool("search_memories", {"query": "cat", "user_id": "alice"}))["results"]
            assert [r["memory"] for r in cats][:1] == ["The user's cat is called Tom."]

    with live("bank", "knn-joint") as (url, _):
        asyncio.run(main(url))
        refused = httpx2.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={"Accept": "application/json, text/event-stream"})
        assert refused.status_code == 401


def test_memlm_mcp_over_stdio():
    """One subprocess (it loads the sentence encoder: seconds): its key says whom the tools act for."""
    env = {**os.environ, "MEMLM_HOME": str(home_dir()), "PYTHONPATH": str(SRC)}
    with KeyStore(keys_path()) as store:
        key = store.create("carol")
    FactMemory(facts_path()).add("I play the cello.", user="carol")

    async def main() -> None:
        server = StdioServerParameters(command=sys.executable, args=["-m", "memlm.cli", "mcp"],
                                       env={**env, "MEMLM_API_KEY": key})
        async with Client(server) as client:
            listed = data(await client.call_tool("list_memories", {}))["results"]
            assert [r["memory"] for r in listed] == ["The user plays the cello."]
            data(await client.call_tool("delete_all_memories", {}))
            await exercise_fact_tools(client)
            other = await client.call_tool("list_memories", {"user_id": "ada"})
            assert other.is_error and "not found" in other.content[0].text

    asyncio.run(main())


def test_stdio_acts_for_the_user_given_or_the_keys(tmp_path, monkeypatch):
    with KeyStore(tmp_path / "keys.sqlite") as store:
        key = store.create("carol")
        monkeypatch.delenv("MEMLM_API_KEY", raising=False)
        assert _stdio_principal(store, None, False) == Principal("local", "user")
        assert _stdio_principal(store, "ada", True) == Principal("ada", "admin")
        monkeypatch.setenv("MEMLM_API_KEY", key)
        assert _stdio_principal(store, None, False).user == "carol"
        assert _stdio_principal(store, "ada", False).user == "ada"  # --user wins over the key
        monkeypatch.setenv("MEMLM_API_KEY", "mlm-bad")
        with pytest.raises(ConfigError, match="MEMLM_API_KEY"):
            _stdio_principal(store, None, False)
        with pytest.raises(ConfigError):
            _stdio_principal(store, "../x", False)
