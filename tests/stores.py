"""Real store servers for the tests, started by the tests: PostgreSQL + pgvector from `pgserver`.

`store_url(kind, tmp_path)` gives a fresh, empty store of a backend: an SQLite file, or a new
database on the session's PostgreSQL server.
"""

from __future__ import annotations

import os
import uuid

import pytest

BACKENDS = ["sqlite", "postgres"]
_SERVER: dict[str, object] = {}


def postgres_server(base_dir):
    """The session's PostgreSQL server (started once; skipped with the reason if it cannot start)."""
    if "server" not in _SERVER:
        try:
            import pgserver
            import pgvector  # noqa: F401
            import psycopg  # noqa: F401
        except ImportError as error:
            _skip(f"PostgreSQL tests need `pip install memlm[postgres]` and pgserver ({error})")
        try:
            _SERVER["server"] = pgserver.get_server(base_dir, cleanup_mode="stop")
        except Exception as error:  # noqa: BLE001 - the reason is reported in the skip
            _skip(f"pgserver could not start PostgreSQL here: {error}")
    return _SERVER["server"]


def _skip(reason: str) -> None:
    """Skip, or fail where the stores are required (`MEMLM_REQUIRE_STORES`, set by .ci/run)."""
    if os.environ.get("MEMLM_REQUIRE_STORES"):
        pytest.fail(reason)
    pytest.skip(reason)


def stop_postgres() -> None:
    server = _SERVER.pop("server", None)
    if server is not None:
        server.cleanup()


def new_postgres_database(server) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name)


def store_url(kind: str, tmp_path, server_dir=None) -> str:
    if kind == "sqlite":
        return str(tmp_path / f"facts-{uuid.uuid4().hex[:6]}.sqlite")
    if kind == "postgres":
        return new_postgres_database(postgres_server(server_dir))
    raise ValueError(kind)
