"""MCP tools over the same memory operations as the HTTP API (official `mcp` SDK 2.x, `MCPServer`).

Tools: `add_memory`, `search_memories`, `list_memories`, `get_memory`, `update_memory`,
`delete_memory`, `delete_all_memories`, `memory_history`; and, when a model with a key/value memory is
behind them (the server's `/mcp`), `memorize_document` (with progress notifications),
`list_documents`, `search_documents`, `delete_document`.

Who a call acts for comes from `identify(ctx)`: over stdio (`memlm mcp`), the user given on the
command line (or the key in `MEMLM_API_KEY`); over HTTP, the request's API key, exactly as for the
REST API (`user_id` works for admin keys; another user's memory reads as not found).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

import memlm
from memlm.errors import MemlmError
from memlm.server.auth import act_as
from memlm.server.errors import ApiError
from memlm.server.facts import FactsAdapter
from memlm.server.keys import Principal

INSTRUCTIONS = """Long-term memory of facts about the user (memlm). Search before answering questions about the
user; add what the user states about themselves (name, home, work, family, likes, plans). Each memory has an id for
get/update/delete; history shows every change."""


def _tool_error(error: BaseException) -> ToolError:
    if isinstance(error, ApiError):
        return ToolError(error.message)
    if isinstance(error, MemlmError | KeyError):
        return ToolError(str(error).strip("'\""))
    return ToolError(f"{type(error).__name__}: {error}")


def create_mcp(facts: FactsAdapter, identify: Callable[[Context | None], Principal], documents: Any = None
               ) -> MCPServer:
    """An `MCPServer` whose tools act on `facts` (and `documents`, a `memlm.server.documents.Documents`)."""
    # WARNING: the SDK configures logging at its level; INFO would log every HTTP request a client makes.
    server = MCPServer("memlm", instructions=INSTRUCTIONS, version=memlm.__version__, log_level="WARNING")

    def call(ctx: Context | None, user_id: str | None, fn: Callable[[str], Any]) -> Any:
        try:
            user = act_as(identify(ctx), user_id)
            return fn(user)
        except (ApiError, MemlmError, KeyError) as error:
            raise _tool_error(error) from None

    @server.tool()
    def add_memory(messages: str | list[dict[str, str]], ctx: Context, user_id: str | None = None,
                   agent_id: str | None = None, run_id: str | None = None, metadata: dict[str, Any] | None = None,
                   infer: bool = True) -> dict[str, Any]:
        """Remember what messages say about the user: a text, or chat messages [{"role", "content"}]
        (facts are extracted from user messages; infer=false stores each text as it is)."""
        return {"results": call(ctx, user_id, lambda user: facts.add(
            user, messages, agent_id=agent_id, run_id=run_id, metadata=metadata, infer=infer))}

    @server.tool()
    def search_memories(query: str, ctx: Context, user_id: str | None = None, agent_id: str | None = None,
                        run_id: str | None = None, filters: dict[str, Any] | None = None, limit: int = 5,
                        threshold: float | None = None) -> dict[str, Any]:
        """The user's memories most relevant to a query, best first (score and similarity included)."""
        return {"results": call(ctx, user_id, lambda user: facts.search(
            user, query, limit=max(1, min(limit, 100)), agent_id=agent_id, run_id=run_id, filters=filters,
            threshold=threshold))}

    @server.tool()
    def list_memories(ctx: Context, user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None,
                      filters: dict[str, Any] | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """The user's memories, most recently used first."""
        return {"results": call(ctx, user_id, lambda user: facts.get_all(
            user, limit=max(1, min(limit, 1000)), offset=max(0, offset), agent_id=agent_id, run_id=run_id,
            filters=filters))}

    @server.tool()
    def get_memory(memory_id: int, ctx: Context, user_id: str | None = None) -> dict[str, Any]:
        """One memory by id."""
        return call(ctx, user_id, lambda user: facts.get(user, memory_id))

    @server.tool()
    def update_memory(memory_id: int, ctx: Context, text: str | None = None, metadata: dict[str, Any] | None = None,
                      user_id: str | None = None) -> dict[str, Any]:
        """Change a memory's text and/or metadata (its history keeps the old text)."""
        return call(ctx, user_id, lambda user: facts.update(user, memory_id, text, metadata))

    @server.tool()
    def delete_memory(memory_id: int, ctx: Context, user_id: str | None = None) -> dict[str, Any]:
        """Forget one memory by id."""
        call(ctx, user_id, lambda user: facts.delete(user, memory_id))
        return {"deleted": 1, "message": f"memory {memory_id} deleted"}

    @server.tool()
    def delete_all_memories(ctx: Context, user_id: str | None = None, agent_id: str | None = None,
                            run_id: str | None = None) -> dict[str, Any]:
        """Forget all of the user's memories (or those of one agent_id / run_id)."""
        deleted = call(ctx, user_id, lambda user: facts.delete_all(user, agent_id=agent_id, run_id=run_id))
        return {"deleted": deleted, "message": f"deleted {deleted} memories"}

    @server.tool()
    def memory_history(memory_id: int, ctx: Context, user_id: str | None = None) -> dict[str, Any]:
        """Every change of a memory: added, updated, deleted, by whom, when."""
        return {"results": call(ctx, user_id, lambda user: facts.history(user, memory_id))}

    if documents is not None and documents.engine.has_documents:
        engine = documents.engine

        async def owner(ctx: Context, user_id: str | None) -> str:
            try:
                return act_as(identify(ctx), user_id)
            except ApiError as error:
                raise _tool_error(error) from None

        @server.tool()
        async def memorize_document(text: str, ctx: Context, title: str | None = None,
                                    user_id: str | None = None) -> dict[str, Any]:
            """Stream a long text into the user's key/value memory; reports progress per segment and
            returns when it is done."""
            user = await owner(ctx, user_id)
            try:
                row = await documents.start(user, title, text)
                while row["status"] in ("queued", "running"):
                    await ctx.report_progress(row["done"], row["segments"], f"memorizing {row['title']}")
                    await asyncio.sleep(0.1)
                    row = documents.row(user, row["id"])
            except (ApiError, MemlmError) as error:
                raise _tool_error(error) from None
            await ctx.report_progress(row["done"], row["segments"], row["status"])
            return row

        @server.tool()
        async def list_documents(ctx: Context, user_id: str | None = None) -> dict[str, Any]:
            """The user's documents and their progress."""
            return {"results": documents.rows(await owner(ctx, user_id))}

        @server.tool()
        async def search_documents(query: str, ctx: Context, limit: int = 20, user_id: str | None = None
                                   ) -> dict[str, Any]:
            """Where a short text occurs in the user's key/value memory (document id and position)."""
            user = await owner(ctx, user_id)
            return {"results": await engine.run(engine.search_documents, user, query, max(1, min(limit, 200)))}

        @server.tool()
        async def delete_document(document_id: str, ctx: Context, user_id: str | None = None) -> dict[str, Any]:
            """Forget a document: its items leave the key/value memory."""
            user = await owner(ctx, user_id)
            try:
                deleted = await documents.delete(user, document_id)
            except (ApiError, MemlmError) as error:
                raise _tool_error(error) from None
            return {"deleted": deleted, "message": f"document {document_id} forgotten"}

    return server


def mcp_route(server: MCPServer, auth: Any) -> Any:
    """A Starlette route serving `server`'s tools at /mcp (streamable HTTP, stateless; answers stream as SSE,
    so progress notifications reach the client).

    In keys mode a request without a valid key is refused (401) before it reaches the MCP layer; the
    tools then read the same key to know whom they act for. Host and Origin checks are the app's
    (`memlm.server.middleware.Guard`, the same for every route), so the SDK's own are off. Run
    `server.session_manager.run()` for the app's lifetime.
    """
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.routing import Route

    from memlm.server.auth import key_from_headers
    from memlm.server.errors import error_response

    server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=False,
                               transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    handler = StreamableHTTPASGIApp(server.session_manager)

    class Guarded:  # a class, so that Starlette routes to it as an ASGI app rather than a request handler
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                auth.verify(key_from_headers(headers))
            except ApiError as error:
                response = error_response(error.status, error.message, error.code, None, error.headers)
                await response(scope, receive, send)
                return
            await handler(scope, receive, send)

    return Route("/mcp", endpoint=Guarded(), methods=["GET", "POST", "DELETE"])
