"""Real store servers for the tests, started by the tests: PostgreSQL + pgvector from `pgserver`.

`store_url(kind, tmp_path)` gives a fresh, empty store of a backend: an SQLite file, or a new
database on the session's PostgreSQL server.
"""

from __future__ import annotations

import os
import uuid

import pytest

BACKENDS = ["sqlite", "postgres", "milvus"]
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


def milvus_server(data_dir) -> str:
    """The session's milvus-lite gRPC server (`python -m milvus_lite server`), as host:port."""
    if "milvus" not in _SERVER:
        import socket
        import subprocess
        import sys
        import time

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                                    "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _SERVER["milvus"] = (process, f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                _skip(f"milvus-lite's server did not start: {process.stderr.read().decode()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    _skip("milvus-lite's server did not listen within 60 s")
                time.sleep(0.2)
    return _SERVER["milvus"][1]


def stop_servers() -> None:
    server = _SERVER.pop("server", None)
    if server is not None:
        server.cleanup()
    milvus = _SERVER.pop("milvus", None)
    if milvus is not None:
        milvus[0].terminate()
        milvus[0].wait(timeout=30)


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
    if kind == "milvus":
        try:
            import milvus_lite  # noqa: F401
            import pymilvus  # noqa: F401
        except ImportError as error:
            _skip(f"Milvus tests need `pip install memlm[milvus]` ({error})")
        address = milvus_server(server_dir.parent / "milvus")
        return f"milvus://{address}?records={tmp_path / ('rows-' + uuid.uuid4().hex[:6])}.sqlite" \
               f"&collection=t_{uuid.uuid4().hex[:12]}"
    raise ValueError(kind)
