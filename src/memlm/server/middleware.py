"""What every request passes before it reaches a route (plain ASGI, so it also guards /mcp):

* **size**: a body larger than the limit (by its Content-Length, or as it arrives) is answered 413
  without reaching the app; documents have their own, larger limit.
* **Host** (local mode only): a server without keys answers only requests addressed to a loopback
  name, so a web page cannot reach it through DNS rebinding.
* **cross-site writes**: a request that changes something must send JSON, and if a browser says
  which page sent it (`Origin`), that page must be this server or an allowed CORS origin; other
  sites cannot make a visitor's browser write to the memory.
* **headers**: pages are served with a strict Content-Security-Policy and no framing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"content-security-policy", CSP.encode())]


async def _reply(send: Send, status: int, message: str, code: str) -> None:
    types = {400: "invalid_request_error", 403: "permission_error", 413: "request_too_large",
             415: "invalid_request_error"}
    body = json.dumps({"error": {"message": message, "type": types.get(status, "invalid_request_error"),
                                 "code": code, "param": None}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The checks of the module docstring, around an ASGI app."""

    def __init__(self, app: Any, *, max_body: int, large_bodies: dict[str, int] | None = None,
                 allowed_hosts: set[str] | None = None, cors_origins: list[str] | None = None):
        self.app = app
        self.max_body = max_body
        self.large_bodies = large_bodies or {}
        self.allowed_hosts = allowed_hosts
        self.cors_origins = set(cors_origins or [])

    def _limit(self, path: str, method: str) -> int:
        for prefix, limit in self.large_bodies.items():
            if path == prefix and method == "POST":
                return limit
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            await _reply(send, 400, f"invalid Host header {host!r}: this server answers loopback names only "
                                    "(it runs without API keys)", "invalid_host")
            return
        origin = headers.get("origin")
        if method in WRITE_METHODS and origin and origin != "null" and origin not in self.cors_origins \
                and urlsplit(origin).netloc != host:
            await _reply(send, 403, f"cross-site request from {origin} refused (allow it with --cors-origin)",
                         "cross_site")
            return
        length = headers.get("content-length")
        has_body = (length not in (None, "0")) or "transfer-encoding" in headers
        limit = self._limit(path, method)
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _reply(send, 413, f"request body too large (limit {limit:,} bytes)", "too_large")
            return
        if method in WRITE_METHODS and has_body and path != "/mcp":
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                await _reply(send, 415, f"send JSON (Content-Type: application/json), not {content_type or 'nothing'}",
                             "unsupported_media_type")
                return
        if has_body:
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body.extend(message.get("body", b""))
                more = message.get("more_body", False)
                if len(body) > limit:
                    await _reply(send, 413, f"request body too large (limit {limit:,} bytes)", "too_large")
                    return
            replayed, original = False, receive

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await original()

            receive = replay

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
