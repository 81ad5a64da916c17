"""Storage for the key/value memory: vector indexes (`index`), SQLite provenance records (`records`),
the vectors of one (kind, row, layer) (`group`), and the `KeyValueStore` that combines them with
capacity, eviction and atomic saves (`kv_store`).

Names are loaded on first use, so `memlm.store.sqlite` (used by the torch-free fact store) can be
imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKENDS": "memlm.store.index", "VectorIndex": "memlm.store.index", "make_index": "memlm.store.index",
    "GroupSpec": "memlm.store.group", "KeyValueStore": "memlm.store.kv_store", "StoreLayout": "memlm.store.group",
    "RecordBatch": "memlm.store.kv_store", "save_store": "memlm.store.kv_store", "load_store": "memlm.store.kv_store",
    "remove_store": "memlm.store.kv_store",
    "Record": "memlm.store.records", "RecordFilter": "memlm.store.records", "RecordStore": "memlm.store.records",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memlm.store' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
