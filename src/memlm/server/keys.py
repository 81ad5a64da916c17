"""API keys of the server: made by `memlm keys create`, stored only as hashes, revoked by id or user.

A key reads `mlm-<id>-<secret>`: `id` (8 hex digits) names the row, `secret` is 32 random bytes
(base64url). The database (`<home>/keys.sqlite`) keeps the id, the SHA-256 of the whole key, the user
it acts for and its role; the key itself is printed once and never stored or logged. SHA-256 and not
a slow password hash on purpose: a 256-bit random secret cannot be guessed, so a fast hash loses
nothing and costs microseconds per request (a slow one would cost tens of milliseconds each).

Roles:

* `user`: acts for its own user only; naming another user reads as "not found".
* `admin`: acts for any user named in a request (`user`, `user_id`), e.g. an app serving many end
  users; without one it acts as its own user.

Example:
    >>> keys = KeyStore(home_dir() / "keys.sqlite")
    >>> key = keys.create("alice")            # 'mlm-1a2b3c4d-...' shown once
    >>> keys.verify(key).user
    'alice'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError
from memlm.paths import check_name, home_dir
from memlm.store.sqlite import connect, transaction

ROLES = ("user", "admin")
KEYS_FILE = "keys.sqlite"
_KEY = re.compile(r"mlm-([0-9a-f]{8})-([A-Za-z0-9_-]{43})")  # fullmatch
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,            -- the public part of the key, shown by `memlm keys list`
    hash TEXT NOT NULL,             -- sha256 of the whole key, hex
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    label TEXT,
    created REAL NOT NULL,
    revoked REAL                    -- NULL while the key is valid
);
CREATE INDEX IF NOT EXISTS keys_user ON keys (user);
"""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the key's user and role (`key_id` None: the local user, no key)."""

    user: str
    role: str
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class KeyInfo:
    id: str
    user: str
    role: str
    label: str | None
    created: float
    revoked: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def keys_path(home: str | os.PathLike | None = None) -> Path:
    return home_dir(home) / KEYS_FILE


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """API keys in one SQLite file; safe to share between the server and `memlm keys` processes."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else keys_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = connect(self.path, _SCHEMA, 1)
        if os.name == "posix":
            os.chmod(self.path, 0o600)  # hashes only, but nobody else needs to read them

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def create(self, user: str, role: str = "user", label: str | None = None) -> str:
        """Make a key for `user`; returns the key, the only time it exists in clear."""
        check_name(user, "user id")
        if role not in ROLES:
            raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
        with transaction(self.connection):
            while True:
                key_id = secrets.token_hex(4)
                if self.connection.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone() is None:
                    break
            key = f"mlm-{key_id}-{secrets.token_urlsafe(32)}"
            self.connection.execute(
                "INSERT INTO keys (id, hash, user, role, label, created) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, _digest(key), user, role, label, time.time()))
        return key

    def verify(self, key: str | None) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else (no detail on purpose)."""
        match = _KEY.fullmatch(key or "")
        if match is None:
            return None
        row = self.connection.execute("SELECT hash, user, role, revoked FROM keys WHERE id = ?",
                                      (match.group(1),)).fetchone()
        if row is None or row[3] is not None or not hmac.compare_digest(row[0], _digest(key or "")):
            return None
        return Principal(user=row[1], role=row[2], key_id=match.group(1))

    def revoke(self, key_id: str | None = None, user: str | None = None) -> int:
        """Revoke one key by id (or by the whole key) or every key of a user; returns how many."""
        if (key_id is None) == (user is None):
            raise ConfigError("revoke needs exactly one of a key id or a user")
        now = time.time()
        with transaction(self.connection):
            if user is not None:
                cursor = self.connection.execute("UPDATE keys SET revoked = ? WHERE user = ? AND revoked IS NULL",
                                                 (now, check_name(user, "user id")))
            else:
                match = _KEY.fullmatch(key_id or "")
                key_id = match.group(1) if match else key_id
                cursor = self.connection.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                                                 (now, key_id))
        return cursor.rowcount

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        sql = "SELECT id, user, role, label, created, revoked FROM keys"
        if not include_revoked:
            sql += " WHERE revoked IS NULL"
        return [KeyInfo(*row) for row in self.connection.execute(sql + " ORDER BY created, id")]

    def active_count(self) -> int:
        return int(self.connection.execute("SELECT COUNT(*) FROM keys WHERE revoked IS NULL").fetchone()[0])
