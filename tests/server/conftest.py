"""Fixtures of the server tests: apps on tiny models, keys, in-process clients and live uvicorn servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from serverkit import BASE, build_app, serving
from starlette.testclient import TestClient

from memlm.paths import home_dir
from memlm.server import KeyStore
from memlm.server.keys import keys_path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The server's worker, the event loop and the test client share two busy cores: with one torch thread
    a tiny model's turn takes milliseconds, with two it can wait on OpenMP for hundreds (docs/bank.md)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_app(tokenizer) -> Callable[..., Any]:
    return lambda *memories, **settings: build_app(tokenizer, memories or ("bank", "recurrent"), **settings)


@pytest.fixture
def keys() -> Iterator[dict[str, str]]:
    """Keys of alice, bob (users) and root (admin), made before the app so that it runs in keys mode."""
    with KeyStore(keys_path()) as store:
        yield {"alice": store.create("alice"), "bob": store.create("bob"), "root": store.create("root", "admin")}


@pytest.fixture
def client(make_app) -> Iterator[TestClient]:
    """A local-mode app (no keys) on bank + recurrent, in process."""
    with TestClient(make_app(), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def keyed_client(make_app, keys) -> Iterator[TestClient]:
    """A keys-mode app on bank + recurrent, in process (send keys with `bearer(keys[...])`)."""
    with TestClient(make_app(), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def live(make_app) -> Callable[..., Any]:
    """live(*memories, **settings) -> a context manager serving a new app; yields (base URL, app)."""

    @contextmanager
    def start(*memories: str, **settings: Any) -> Iterator[tuple[str, Any]]:
        app = make_app(*memories, **settings)
        with serving(app) as url:
            yield url, app

    return start


@pytest.fixture
def home() -> Path:
    return home_dir()
