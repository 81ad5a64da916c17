"""Milvus for the vectors, the SQLite store for the rows (pymilvus; milvus-lite on one machine, the
same client code against a Milvus server or cluster).

    milvus:///path/to/folder                      milvus-lite: <folder>/milvus.db, rows in <folder>/facts.sqlite
    milvus://host:19530?records=/path/facts.sqlite   a Milvus server; rows in that SQLite file

The rows, history, supersession, expiry and the BM25 index are the SQLite store's
(`memlm.facts.store.FactStore`); only the per-user vector index moves into a Milvus collection (one
entity per active fact: id, owner, embedding; exact FLAT inner-product search filtered by owner).
The collection is brought up to date from the store's history like the FAISS index is: upserts and
deletes by fact id are idempotent, so several processes may apply the same changes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from memlm.errors import ConfigError
from memlm.facts.backends import register_backend
from memlm.facts.store import FactStore

MAX_LIMIT = 16_384  # Milvus' largest top-k


class MilvusUserIndex:
    """One user's vectors in a shared Milvus collection (the `UserIndex` interface)."""

    def __init__(self, client: Any, collection: str, user: str, size: Callable[[], int]):
        self.client, self.collection, self.size = client, collection, size
        self.filter = f"owner == {json.dumps(user)}"

    def __len__(self) -> int:
        # The synced collection holds exactly the user's active facts: counted in the rows' database
        # (a count(*) query in milvus-lite scans the collection: ~seconds at 20K vectors).
        return self.size()

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        owner = json.loads(self.filter.split("==", 1)[1])
        self.client.upsert(self.collection, [{"id": int(i), "owner": owner, "embedding": v.astype(np.float32).tolist()}
                                             for i, v in zip(ids, vectors, strict=True)])

    def remove(self, ids: np.ndarray) -> None:
        self.client.delete(self.collection, ids=[int(i) for i in ids])

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        found = self.client.search(self.collection, [np.asarray(query, dtype=np.float32).reshape(-1).tolist()],
                                   limit=min(k, MAX_LIMIT), filter=self.filter, output_fields=["id"],
                                   search_params={"metric_type": "IP"})
        return [(int(hit["id"]), float(hit["distance"])) for hit in found[0]]


class MilvusFactStore(FactStore):
    """The SQLite fact store with its vector index in Milvus."""

    shared_index = True

    def __init__(self, url: str, dimension: int, encoder: str, clock: Callable[[], float] = time.time):
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as error:
            raise ConfigError("the milvus store needs `pip install memlm[milvus]` (pymilvus, milvus-lite)") from error
        parsed = urlparse(url)
        options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        if parsed.netloc:  # a Milvus server
            if "records" not in options:
                raise ConfigError("a milvus://host:port store needs ?records=<SQLite file for the rows>")
            uri, records = f"http://{parsed.netloc}", options["records"]
        else:  # milvus-lite in a folder
            folder = Path(parsed.path)
            folder.mkdir(parents=True, exist_ok=True)
            uri, records = str(folder / "milvus.db"), options.get("records", str(folder / "facts.sqlite"))
        super().__init__(records, dimension, encoder, clock=clock)
        self.collection = options.get("collection", "memlm_facts")
        self.client = _connect(MilvusClient, uri)
        if not self.client.has_collection(self.collection):
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("owner", DataType.VARCHAR, max_length=512)
            schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=int(dimension))
            index = self.client.prepare_index_params()
            index.add_index("embedding", index_type="FLAT", metric_type="IP")
            self.client.create_collection(self.collection, schema=schema, index_params=index,
                                          consistency_level="Strong")

    def _new_index(self, user: str) -> MilvusUserIndex:
        def size() -> int:
            return int(self.connection.execute("SELECT COUNT(*) FROM facts WHERE user = ? AND status = 'active'",
                                               (user,)).fetchone()[0])

        return MilvusUserIndex(self.client, self.collection, user, size)

    def close(self) -> None:
        self.client.close()
        super().close()


def _connect(client_class: Any, uri: str, attempts: int = 5) -> Any:
    """A client of the server at `uri`. A connection the server refuses is tried again: milvus-lite's
    gRPC server answers a new connection with GOAWAY "too many pings" after a long session of
    clients (seen in the test suite)."""
    from pymilvus.exceptions import MilvusException

    for attempt in range(attempts):
        try:
            return client_class(uri, token=os.environ.get("MILVUS_TOKEN", ""))
        except MilvusException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_milvus(url: str, dimension: int, encoder: str, clock: Callable[[], float] = time.time) -> MilvusFactStore:
    return MilvusFactStore(url, dimension, encoder, clock)


register_backend("milvus", open_milvus)
