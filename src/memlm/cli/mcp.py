"""`memlm mcp`: the memory tools for agents, over MCP (stdio, or streamable HTTP)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from memlm.cli.options import friendly_errors


@friendly_errors
def mcp(
    transport: Annotated[str, typer.Option(help="stdio (an agent launches this command) or http")] = "stdio",
    user: Annotated[str | None, typer.Option(
        help="stdio: the user the tools act for [default: the user of $MEMLM_API_KEY, else 'local']")] = None,
    any_user: Annotated[bool, typer.Option(
        "--any-user", help="stdio: let tools name any user_id (the process can read the store anyway)")] = False,
    host: Annotated[str, typer.Option(help="http: address (off loopback, API keys are required)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="http: port")] = 8001,
    path: Annotated[Path | None, typer.Option(help="fact store file [default: <home>/facts.sqlite]")] = None,
) -> None:
    """Serve the memory operations (add, search, list, get, update, delete, delete all, history) as MCP
    tools. Over stdio the tools act for --user; over http for each request's API key (or the local
    user on loopback without keys). Document tools need the model: use `memlm serve`'s /mcp."""
    from memlm.facts import FactMemory
    from memlm.facts.backends import default_store
    from memlm.paths import facts_path, home_dir
    from memlm.server.app import SERVER_DB
    from memlm.server.facts import FactsAdapter
    from memlm.server.keys import KeyStore, keys_path
    from memlm.server.mcp import create_mcp

    if transport not in ("stdio", "http"):
        raise typer.BadParameter("use stdio or http", param_hint="--transport")
    home = home_dir()
    keys = KeyStore(keys_path(home))
    adapter = FactsAdapter(FactMemory(path or default_store(facts_path(home))), home / SERVER_DB)
    if transport == "stdio":
        principal = _stdio_principal(keys, user, any_user)
        server = create_mcp(adapter, lambda _ctx: principal)
        server.run("stdio")
        return
    _serve_http(adapter, keys, host, port)


def _stdio_principal(keys: Any, user: str | None, any_user: bool) -> Any:
    from memlm.errors import ConfigError
    from memlm.paths import check_name
    from memlm.server.keys import Principal

    key = os.environ.get("MEMLM_API_KEY")
    if user is None and key:
        found = keys.verify(key)
        if found is None:
            raise ConfigError("MEMLM_API_KEY is not a valid key of this home (memlm keys list)")
        return found
    return Principal(user=check_name(user or "local", "user"), role="admin" if any_user else "user")


def _serve_http(adapter: Any, keys: Any, host: str, port: int) -> None:
    import contextlib

    import uvicorn
    from starlette.applications import Starlette

    from memlm.server.auth import Auth, check_exposure, key_from_headers
    from memlm.server.mcp import create_mcp, mcp_route
    from memlm.server.middleware import Guard

    mode = check_exposure(host, keys)
    auth = Auth(keys=keys) if mode == "keys" else Auth(local_user="local")
    server = create_mcp(adapter, lambda ctx: auth.verify(key_from_headers(ctx.headers or {})))
    route = mcp_route(server, auth)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        async with server.session_manager.run():
            yield

    app = Starlette(routes=[route], lifespan=lifespan)
    allowed = {"127.0.0.1", "localhost", "::1"} if mode == "local" else None
    guarded = Guard(app, max_body=1_000_000, allowed_hosts=allowed)
    typer.echo(f"memlm mcp: http://{host}:{port}/mcp ("
               + ("API keys required" if mode == "keys" else "no API key: every call acts as the local user 'local'")
               + ")", err=True)
    uvicorn.run(guarded, host=host, port=port, log_level="warning")
