"""`create_app`: the FastAPI application of `memlm serve`, from a model built elsewhere.

Example (what tests do, with a tiny model):
    >>> model = memlm.MemoryModel(backbone, server_memories(["bank", "recurrent"], home), tokenizer=tokenizer)
    >>> app = create_app(model, tokenizer, ServerSettings(home=home))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

import memlm
from memlm.errors import ConfigError
from memlm.eval.human import VoteStore, votes_path
from memlm.facts.backends import default_store, scheme_of
from memlm.model import MemoryModel
from memlm.paths import facts_path, home_dir
from memlm.server import documents as documents_routes
from memlm.server import errors, human, memories, openai_api, web
from memlm.server.auth import Auth, is_loopback, key_from_headers
from memlm.server.documents import Documents
from memlm.server.engine import Engine
from memlm.server.facts import FactsAdapter
from memlm.server.keys import KeyStore, keys_path
from memlm.server.middleware import Guard

logger = logging.getLogger("memlm.server")
SERVER_DB = "server.sqlite"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
DEFAULT_BATCH_SIZE = 32  # rows decoded together on CUDA unless told otherwise (`--batch-size`)


@dataclass
class ServerSettings:
    """How the server runs; every field has a safe default.

    Args:
        home: where memories, keys and votes live (default: `MEMLM_HOME` / the user data dir).
        auth: "auto" (keys if any exist, else local), "keys" or "local".
        local_user: the user every request acts as in local mode.
        host: the address it listens on (local mode is refused off loopback by `memlm serve`).
        extra_hosts: more Host names answered in local mode (tests use "testserver").
        cors_origins: origins allowed to call it from a browser (default none: CORS off).
        max_body_bytes / max_document_chars: request size limits.
        max_tokens_limit: the most tokens one answer may ask for.
        max_queue: model jobs waiting at most before "server busy" (503).
        report_dir: the evaluation report folder the web page shows.
        generation: default decoding options (transformers names), e.g. {"max_new_tokens": 128}.
        segment_length: tokens per segment when memorizing documents.
        mcp: also serve the MCP tools at /mcp (streamable HTTP).
        batch_size: chat turns decoded together at most (continuous batching, docs/server.md); 0 or 1:
            one at a time; None: `DEFAULT_BATCH_SIZE` when the model is on CUDA, else one at a time.
    """

    home: Path | None = None
    auth: str = "auto"
    local_user: str = "local"
    host: str = "127.0.0.1"
    extra_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 1_000_000
    max_document_chars: int = 2_000_000
    max_tokens_limit: int = 1024
    max_queue: int = 64
    report_dir: Path | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    segment_length: int = 512
    mcp: bool = True
    name: str | None = None


def server_memories(specs: list[Any], home: str | Path | None = None) -> list[Any]:
    """Memory configs for a server: the `bank` reads and writes the shared fact store of `home` with
    prompt fusion (what the API's memory routes see), whatever the spec said about its store."""
    from memlm.registry import Pretrained, make_config, pretrained_of

    options = {"store": str(default_store(facts_path(home))), "fusion": "prompt"}
    configs: list[Any] = []
    for spec in specs:
        pretrained = pretrained_of(spec)
        if pretrained is not None:  # trained weights (the chat preset): their bank on the shared store
            settings = {**pretrained.settings, "bank": {**pretrained.settings.get("bank", {}), **options}}
            configs.append(Pretrained(pretrained.path, settings))
            continue
        config = make_config(spec)
        configs.append(config.replace(**options) if config.mechanism == "bank" else config)
    return configs


def create_app(model: MemoryModel, tokenizer: Any, settings: ServerSettings | None = None,
               facts: Any = None, keys: KeyStore | None = None) -> FastAPI:
    """The server app around `model` (a `MemoryModel` with the memories to offer attached).

    `facts` (a `memlm.FactMemory`) defaults to one on the bank's store file, or `<home>/facts.sqlite`;
    `keys` to the key store of `<home>`. In auth mode "auto", existing keys switch authentication on.
    """
    settings = settings or ServerSettings()
    home = home_dir(settings.home)
    settings.home = home
    if "bank" in model.memories:
        store = model.memories["bank"].config.store
        if store is None:
            raise ConfigError("the server's bank needs a store file (memlm.server.server_memories sets it)")
        facts_file = Path(store) if scheme_of(store) == "sqlite" else store
    else:
        facts_file = default_store(facts_path(home))
    if facts is None:
        from memlm.facts import FactMemory

        facts = FactMemory(facts_file)
    keys = keys if keys is not None else KeyStore(keys_path(home))
    mode = settings.auth
    if mode == "auto":
        mode = "keys" if keys.active_count() else "local"
    if mode not in ("keys", "local"):
        raise ConfigError(f"auth must be auto, keys or local, got {settings.auth!r}")
    auth = Auth(keys=keys) if mode == "keys" else Auth(local_user=settings.local_user)
    batch_size = settings.batch_size
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if model.layout.device.type == "cuda" else 0
    engine = Engine(model, tokenizer, home, name=settings.name, max_queue=settings.max_queue,
                    default_generation=settings.generation, batch_size=batch_size)
    adapter = FactsAdapter(facts, home / SERVER_DB)
    documents = Documents(engine, home / SERVER_DB, settings.segment_length)
    votes = VoteStore(votes_path(home))

    mcp_server = None
    if settings.mcp:
        from memlm.server.mcp import create_mcp

        def identify(ctx: Any) -> Any:
            headers = ctx.headers if ctx is not None and ctx.headers is not None else {}
            return auth.verify(key_from_headers(headers))

        mcp_server = create_mcp(adapter, identify, documents)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if mcp_server is not None:
                await stack.enter_async_context(mcp_server.session_manager.run())
            await engine.run(engine.warm_up, force=True)
            # Everything loaded so far (model, tokenizer, encoder) lives as long as the server: keep it out of
            # the garbage collector's full passes, which otherwise scan it all and pause a turn.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                await documents.shutdown()
                engine.close()
                adapter.close()
                votes.close()
                documents.close()
                keys.close()

    # FastAPI's /docs and /redoc pages load their scripts from a CDN: off (no internet; the page's CSP).
    # The schema is at /openapi.json, and the web page's API tab lists it.
    app = FastAPI(title="memlm", version=memlm.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Chat with memory (OpenAI-compatible), a per-user memory API (mem0-style), "
                              "documents memorized into a key/value memory, human evaluation, and MCP tools at "
                              "/mcp. Authenticate with `Authorization: Bearer <key>` (`memlm keys create`), "
                              "unless the server runs as one local user.")
    app.state.settings, app.state.auth, app.state.engine = settings, auth, engine
    app.state.facts, app.state.documents, app.state.votes = adapter, documents, votes
    app.state.started = int(time.time())
    errors.install(app)
    for module in (openai_api, memories, documents_routes, human, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    if mcp_server is not None:
        from memlm.server.mcp import mcp_route

        app.router.routes.append(mcp_route(mcp_server, auth))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    allowed = None
    if mode == "local":
        allowed = LOOPBACK_NAMES | set(settings.extra_hosts)
        if not is_loopback(settings.host):
            allowed.add(settings.host)
    app.add_middleware(Guard, max_body=settings.max_body_bytes,
                       large_bodies={"/v1/documents": 4 * settings.max_document_chars + 65_536},
                       allowed_hosts=allowed, cors_origins=settings.cors_origins)
    return app
