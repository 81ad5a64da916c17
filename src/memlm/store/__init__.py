"""Storage: vector indexes (`index`), SQLite provenance records (`records`), and the
`KeyValueStore` that combines them with capacity, eviction and atomic saves (`kv_store`)."""

from memlm.store.index import BACKENDS, VectorIndex, make_index
from memlm.store.kv_store import GroupSpec, KeyValueStore, StoreLayout
from memlm.store.records import Record, RecordFilter, RecordStore

__all__ = ["BACKENDS", "GroupSpec", "KeyValueStore", "Record", "RecordFilter", "RecordStore", "StoreLayout",
           "VectorIndex", "make_index"]
