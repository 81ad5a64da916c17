"""Helpers of the server tests (tests/server): apps on tiny models, live uvicorn servers, requests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tiny import tiny_model

from memlm import MemoryModel
from memlm.paths import home_dir
from memlm.server import ServerSettings, create_app, server_memories

BASE = "http://127.0.0.1"  # local mode answers loopback names only; in-process clients use this one


def build_app(tokenizer: Any, memories: tuple[str, ...] = ("bank", "recurrent"), **settings: Any) -> Any:
    """An app on a tiny random llama with `memories`; short answers unless `generation` says otherwise."""
    home = home_dir()
    model = MemoryModel(tiny_model("llama"), server_memories(list(memories), home), tokenizer=tokenizer)
    settings.setdefault("generation", {"max_new_tokens": 6})
    return create_app(model, tokenizer, ServerSettings(home=home, **settings))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def fact_ids(client: Any, headers: dict[str, str] | None = None, **params: Any) -> list[int]:
    """Ids of the memories a client sees (asserting the listing works)."""
    response = client.get("/v1/memories", headers=headers or {}, params=params)
    assert response.status_code == 200, response.text
    return sorted(item["id"] for item in response.json()["results"])
