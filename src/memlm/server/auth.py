"""Who a request acts for.

Two modes, fixed when the app is made:

* **keys**: every API request carries `Authorization: Bearer <key>` (also accepted: `Token <key>`,
  or `X-API-Key: <key>`); the key's user owns the memories. Keys are checked against the key store
  on every request, so a revoked key stops working at once.
* **local**: no key exists and the server listens on loopback only; every request acts as one local
  user, and the server says so when it starts. A server reachable from other machines refuses to
  start without keys (`memlm serve` checks; see `check_exposure`).

A request may name an end user (`user` in a chat request, `user_id` in memory requests). An admin key
acts for whoever is named; a user key (and the local user) only for itself: naming anyone else reads
as "not found", exactly as for a user that does not exist, so a key learns nothing about others.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from memlm.errors import ConfigError
from memlm.paths import check_name
from memlm.server.errors import ApiError, NotFound
from memlm.server.keys import KeyStore, Principal

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}

bearer = HTTPBearer(auto_error=False, description="an API key made by `memlm keys create`")


@dataclass
class Auth:
    """The app's authentication: a key store (keys mode) or a local user (local mode)."""

    keys: KeyStore | None = None
    local_user: str | None = None

    def __post_init__(self) -> None:
        if (self.keys is None) == (self.local_user is None):
            raise ConfigError("Auth needs exactly one of a key store or a local user")
        if self.local_user is not None:
            check_name(self.local_user, "local user")

    @property
    def mode(self) -> str:
        return "local" if self.local_user is not None else "keys"

    def verify(self, key: str | None) -> Principal:
        if self.local_user is not None:
            return Principal(user=self.local_user, role="user")
        assert self.keys is not None
        principal = self.keys.verify(key)
        if principal is None:
            message = "missing API key" if not key else "invalid or revoked API key"
            raise ApiError(401, f"{message}: send 'Authorization: Bearer <key>' (memlm keys create --user NAME)",
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return principal


def key_from_headers(headers: dict[str, str] | object) -> str | None:
    """The key a request carries, from `Authorization: Bearer|Token KEY` or `X-API-Key`."""
    get = headers.get  # type: ignore[attr-defined]
    authorization = get("authorization") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return get("x-api-key") or None


def principal(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    """FastAPI dependency: the principal of the request (401 in keys mode without a valid key)."""
    return request.app.state.auth.verify(key_from_headers(request.headers))


def act_as(who: Principal, requested: str | None, what: str = "user_id") -> str:
    """The user a request acts for: `requested` if this principal may act for it, else 404."""
    if requested is None or requested == "":
        return who.user
    try:
        check_name(requested, what)
    except ConfigError as error:
        raise ApiError(400, str(error), "invalid_value", what) from None
    if who.is_admin or requested == who.user:
        return requested
    raise NotFound(f"user {requested!r} not found", what)


def is_loopback(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: KeyStore) -> str:
    """The auth mode for a server on `host`: keys if any exist; local on loopback; else refuse."""
    if keys.active_count() > 0:
        return "keys"
    if is_loopback(host):
        return "local"
    raise ConfigError(f"refusing to listen on {host} without API keys: anyone who can reach it would read and "
                      f"write every memory. Create one with `memlm keys create --user NAME`, or bind 127.0.0.1")
