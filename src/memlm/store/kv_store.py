"""`KeyValueStore`: vector indexes + values + SQLite provenance, with capacity and atomic saves.

Vectors are organised in *groups* (`group.py`), one per (kind, batch row, layer):

* kind `attention`: one index per KV head over that head's (pre-rotation) keys, and a value table
  (N, heads, head_dim); all heads of one item share its id;
* kind `lm`: one index over final hidden states, and the next-token id of each (kNN-LM).

Each stored item has one SQLite row (see `records.py`) whose id is the vector id. A group holding
more than `capacity` items evicts the oldest (smallest id) or the least used (fewest retrievals).

On disk a store is a directory::

    records.sqlite                 WAL-mode SQLite: rows + meta (committed generation, layout)
    vectors-000007.safetensors     every group of generation 7 (checksummed)

`save()` writes the next generation's vector file (temporary file + rename), then commits one
SQLite transaction that bumps the generation: that commit is the moment the save happens. A process
killed at any point leaves either the old or the new generation complete; `load()` opens the
committed one, rolls back rows written after it, and checks that vectors and rows match.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlm.errors import (
    ConfigError,
    CorruptedFileError,
    IncompatibleMemoryError,
    MemlmError,
    StorageError,
    storage_error,
)
from memlm.serialization import load_tensors, save_tensors
from memlm.store.group import MemoryGroup, SearchResult, StoreLayout
from memlm.store.records import Record, RecordFilter, RecordStore

RECORDS_FILE = "records.sqlite"
LOCK_FILE = ".lock"
LOCK_TIMEOUT_S = 60.0  # how long save()/load() wait for another process's lock


GroupKey = tuple[str, int, int]  # (kind, row, layer)


class RecordBatch:
    """The provenance of N items, turned into record fields only when the rows are written (see
    `KeyValueStore.flush_records`), so that text decoding stays off the write path."""

    def __len__(self) -> int:
        raise NotImplementedError

    def origins(self) -> torch.Tensor:
        """(N, 2) int64 on the host: the (sequence, position) of each item (needed at once)."""
        raise NotImplementedError

    def materialize(self) -> list[dict[str, Any]]:
        """One dict of record fields per item (user, session, sequence, position, token, ...)."""
        raise NotImplementedError


class RecordList(RecordBatch):
    """Record fields given as dicts up front."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def origins(self) -> torch.Tensor:
        return torch.tensor([[int(r.get("sequence", 0)), int(r.get("position", 0))] for r in self.records],
                            dtype=torch.int64).reshape(-1, 2)

    def materialize(self) -> list[dict[str, Any]]:
        return self.records


@dataclass
class _PendingRows:
    """Rows of one `add` not yet written to SQLite; `alive` marks those not removed since."""

    first_id: int
    count: int
    kind: str
    layer: int
    row: int
    created: float
    records: RecordBatch
    alive: np.ndarray | None = None


class KeyValueStore:
    """Groups of vectors with values, plus provenance rows; see the module docstring.

    Example:
        >>> store = KeyValueStore(StoreLayout({"lm": GroupSpec(heads=1, key_dim=576, value_dim=None, metric="l2")}))
        >>> store.add("lm", row=0, layer=-1, keys=h.unsqueeze(1), values=next_tokens, records=[...])
        >>> result = store.search("lm", 0, -1, queries.unsqueeze(0), k=8)  # scores, values, valid, origins
    """

    def __init__(self, layout: StoreLayout, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        layout.validate()
        self.layout = layout
        self.device = torch.device(device)
        self.dtype = dtype
        self.groups: dict[GroupKey, MemoryGroup] = {}
        self._records = RecordStore(None)
        self._pending: list[_PendingRows] = []
        self.directory: Path | None = None
        self._next_id = 1
        self.row_count = 0  # batch rows that have ever been written (partitions)

    @property
    def records(self) -> RecordStore:
        """The provenance rows, every item added so far included (rows are written lazily: see `add`)."""
        self.flush_records()
        return self._records

    @records.setter
    def records(self, records: RecordStore) -> None:
        self._records = records

    def flush_records(self) -> None:
        """Write the rows of items added since the last flush, in one transaction. `add` leaves them
        pending so that writing memory costs no text decoding and no SQLite on its hot path; every
        read of the rows, `save`, `delete` and `stats` flush first, so nothing can see them missing."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = []
        for batch in pending:
            provenance = batch.records.materialize()
            for offset, values in enumerate(provenance):
                if batch.alive is not None and not batch.alive[offset]:
                    continue
                rows.append(Record(
                    id=batch.first_id + offset, kind=batch.kind, layer=batch.layer, row=batch.row,
                    created=batch.created, user=values.get("user"), session=values.get("session"),
                    sequence=int(values.get("sequence", 0)), position=int(values.get("position", 0)),
                    token=int(values.get("token", -1)), length=int(values.get("length", 1)),
                    text=str(values.get("text", "")), context=str(values.get("context", ""))))
        if rows:
            self._records.insert(rows)

    # --- writing -----------------------------------------------------------------------------
    def add(self, kind: str, row: int, layer: int | list[int], keys: torch.Tensor | list[torch.Tensor],
            values: torch.Tensor | list[torch.Tensor], records: list[dict[str, Any]] | RecordBatch,
            heads_first: bool = False) -> torch.Tensor:
        """Store N items (keys (N, heads, key_dim), or (heads, N, key_dim) with `heads_first`);
        `records` gives each one's provenance fields (user, session, sequence, position, token,
        length, text, context), as dicts or as a `RecordBatch` that builds them when they are
        written. Returns the new ids.

        With a list of layers (and one keys/values tensor per layer) the items are stored in every
        one of those layers under the same ids and one record each (its `layer` is -1): deleting
        or evicting an item then removes it from all layers at once.

        The SQLite rows are written later (`flush_records`), before anything reads them."""
        if kind not in self.layout.specs:
            raise ConfigError(f"this store holds kinds {sorted(self.layout.specs)}, not {kind!r}")
        layers = [layer] if isinstance(layer, int) else list(layer)
        keys_per_layer = [keys] if isinstance(keys, torch.Tensor) else list(keys)
        values_per_layer = [values] if isinstance(values, torch.Tensor) else list(values)
        batch = records if isinstance(records, RecordBatch) else RecordList(records)
        if not len(layers) == len(keys_per_layer) == len(values_per_layer):  # checked before anything is written
            raise ConfigError(f"{len(layers)} layer(s) named but keys for {len(keys_per_layer)} and values for "
                              f"{len(values_per_layer)}")
        count = keys_per_layer[0].shape[1 if heads_first else 0]
        if len(batch) != count or any(part.shape[1 if heads_first else 0] != count
                                      for part in [*keys_per_layer, *values_per_layer]):
            raise ConfigError(f"{count} vectors but {len(batch)} records")
        if count == 0:
            return torch.empty(0, dtype=torch.int64)
        first_id = self._next_id
        ids = torch.arange(first_id, first_id + count, dtype=torch.int64)
        record_layer = layers[0] if isinstance(layer, int) else -1
        self._pending.append(_PendingRows(first_id, count, kind, record_layer, row, time.time(), batch))
        self._next_id += count
        self.row_count = max(self.row_count, row + 1)
        origins = batch.origins()
        device_ids = ids.to(self.device)
        evict = None
        for layer_index, layer_keys, layer_values in zip(layers, keys_per_layer, values_per_layer, strict=True):
            group_key = (kind, row, layer_index)
            if group_key not in self.groups:
                self.groups[group_key] = MemoryGroup(self.layout.specs[kind], self.layout, self.device, self.dtype)
            group = self.groups[group_key]
            group.add(device_ids, layer_keys, layer_values, origins, heads_first=heads_first)
            capacity = self.layout.capacity
            if evict is None and capacity is not None and len(group) > capacity:
                evict = group.eviction_candidates(len(group) - capacity, self.layout.eviction)
        if evict is not None:
            self._remove(evict)
        return ids

    def _remove(self, ids: torch.Tensor) -> int:
        removed = sum(group.remove(ids) for group in self.groups.values())
        ids = ids.cpu().numpy()
        written = np.ones(len(ids), dtype=bool)
        for batch in self._pending:  # rows not written yet are simply never written
            inside = (ids >= batch.first_id) & (ids < batch.first_id + batch.count)
            if inside.any():
                if batch.alive is None:
                    batch.alive = np.ones(batch.count, dtype=bool)
                batch.alive[ids[inside] - batch.first_id] = False
                written &= ~inside
        if written.any():
            self._records.mark_deleted(ids[written].tolist())
        return removed

    def delete(self, where: RecordFilter) -> int:
        """Delete matching items (rows and vectors); return how many."""
        ids = self.records.ids(where)
        if not ids:
            return 0
        self._remove(torch.tensor(ids, dtype=torch.int64))
        return len(ids)

    def clear(self) -> None:
        self._pending = []  # never written: nothing to delete
        self.delete(RecordFilter())
        self.groups.clear()
        self.row_count = 0

    # --- reading -----------------------------------------------------------------------------
    def group(self, kind: str, row: int, layer: int) -> MemoryGroup | None:
        group = self.groups.get((kind, row, layer))
        return group if group is not None and len(group) else None

    def search(self, kind: str, row: int, layer: int, queries: torch.Tensor, k: int) -> SearchResult | None:
        """queries (heads, Q, key_dim); None when this group holds nothing."""
        group = self.group(kind, row, layer)
        return None if group is None else group.search(queries, k)

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups.values())

    def stats(self) -> dict[str, Any]:
        return {
            **self.records.stats(),
            "vectors": {f"{kind}/row{row}/layer{layer}": len(group)
                        for (kind, row, layer), group in sorted(self.groups.items())},
            "backend": self.layout.backend,
            "capacity": self.layout.capacity,
            "eviction": self.layout.eviction,
            "directory": str(self.directory) if self.directory else None,
        }

    # --- persistence -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Save atomically (see the module docstring); the store then lives in `directory`.

        Saving into another directory ("save as") copies the records into a staging database,
        commits there, and renames it into place: the rename is then the commit point."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.flush_records()  # every saved vector has its row
        with _locked(directory):
            same_place = self.directory is not None and self.directory.resolve() == directory.resolve()
            staging = directory / f".{RECORDS_FILE}.{os.getpid()}.tmp"
            if same_place:
                records = self.records
            else:
                staging.unlink(missing_ok=True)
                self.records.copy_to(staging)
                records = RecordStore(staging)
            generation = records.generation + 1
            self._write_vectors(directory, generation)
            records.commit_generation(generation, {"layout": self.layout.to_dict()})
            if not same_place:
                records.close()  # checkpoints the staging WAL into its main file
                os.replace(staging, directory / RECORDS_FILE)
                self._records.close()
                self._records = RecordStore(directory / RECORDS_FILE)
                self.directory = directory
            for stale in directory.glob("vectors-*.safetensors"):
                if stale != _vector_file(directory, generation):
                    stale.unlink(missing_ok=True)
        return directory

    # --- persistence in a database (memlm.store.backends) ------------------------------------------
    def snapshot(self) -> Any:
        """Everything a save holds, as plain arrays (`memlm.store.backends.Snapshot`)."""
        from memlm.store.backends import GroupState, Snapshot

        if self.layout.backend != "torch":
            raise ConfigError(f"a store with the {self.layout.backend} index can only be saved in a directory; "
                              "use the torch backend to save it in PostgreSQL or Milvus")
        self.flush_records()
        groups = {}
        for (kind, row, layer), group in sorted(self.groups.items()):
            if not len(group):
                continue
            count = len(group)
            keys = group.keys.to("cpu", torch.float32).transpose(0, 1).reshape(count, -1)
            values = (group.values.cpu() if group.spec.value_dim is None
                      else group.values.to("cpu", torch.float32).transpose(0, 1).reshape(count, -1))
            groups[f"{kind}.{row}.{layer}"] = GroupState(
                group.ids.cpu().numpy(), keys.contiguous().numpy(), values.contiguous().numpy(),
                group._hits.data.cpu().numpy(), group.origins.cpu().numpy())
        return Snapshot(self.layout.to_dict(), 0, list(self._records.iterate()), groups)

    def save_to(self, url: str, name: str) -> int:
        """Save into the PostgreSQL or Milvus store at `url` under `name` (a user, a session),
        replacing what was saved under that name, atomically; returns the saved generation."""
        from memlm.store.backends import open_kv_backend

        snapshot = self.snapshot()
        backend = open_kv_backend(url)
        try:
            return backend.save(name, snapshot)
        finally:
            backend.close()

    @classmethod
    def load_from(cls, url: str, name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  expected_layout: StoreLayout | None = None) -> KeyValueStore:
        """Open what `save_to(url, name)` saved last. Raises `FileNotFoundError` if nothing is saved
        under `name`, `IncompatibleMemoryError` for another model's layout, `CorruptedFileError` if the
        saved rows and vectors do not match."""
        from memlm.store.backends import open_kv_backend, redact

        backend = open_kv_backend(url)
        try:
            snapshot = backend.load(name)
        finally:
            backend.close()
        layout = StoreLayout.from_dict(snapshot.layout)
        if expected_layout is not None and layout.specs != expected_layout.specs:
            raise IncompatibleMemoryError(
                f"the memory {name!r} in {redact(url)} holds {layout.to_dict()['specs']}, but this model needs "
                f"{expected_layout.to_dict()['specs']} (a memory saved for another model?)")
        store = cls(layout, device, dtype)
        store._records.insert(snapshot.records)
        store._records.commit_generation(snapshot.generation, {"layout": snapshot.layout})
        for group_name, state in snapshot.groups.items():
            kind, row, layer = group_name.split(".")
            spec = layout.specs[kind]
            count = len(state.ids)
            keys = torch.from_numpy(state.keys).view(count, spec.heads, spec.key_dim).transpose(0, 1)
            arrays = {f"{group_name}.ids": torch.from_numpy(state.ids),
                      f"{group_name}.hits": torch.from_numpy(state.hits),
                      f"{group_name}.origins": torch.from_numpy(state.origins),
                      f"{group_name}.values": torch.from_numpy(state.values) if spec.value_dim is None
                      else torch.from_numpy(state.values).view(count, spec.heads, spec.value_dim)}
            for head in range(spec.heads):
                arrays[f"{group_name}.h{head}.vectors"] = keys[head].contiguous()
                arrays[f"{group_name}.h{head}.ids"] = arrays[f"{group_name}.ids"]
            store.groups[(kind, int(row), int(layer))] = MemoryGroup.from_arrays(
                spec, layout, arrays, group_name, store.device, dtype)
        store._check_rows_match_vectors()
        store.row_count = 1 + max((row for _, row, _ in store.groups), default=-1)
        store._next_id = store._records.next_id()
        return store

    def _write_vectors(self, directory: Path, generation: int) -> None:
        arrays: dict[str, torch.Tensor] = {}
        group_keys = []
        for (kind, row, layer), group in sorted(self.groups.items()):
            if len(group):
                arrays.update(group.to_arrays(f"{kind}.{row}.{layer}"))
                group_keys.append([kind, row, layer])
        save_tensors(_vector_file(directory, generation), arrays, {
            "format": "memlm-kv", "generation": generation, "layout": self.layout.to_dict(), "groups": group_keys,
        })

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, expected_layout: StoreLayout | None = None) -> KeyValueStore:
        """Open a saved store; roll back anything written after its last save.

        Raises `FileNotFoundError` if nothing is saved there, `CorruptedFileError` for damaged files
        or rows and vectors that do not match, `IncompatibleMemoryError` if the layout differs from
        `expected_layout` (e.g. another model's key width)."""
        directory = Path(directory)
        if not (directory / RECORDS_FILE).is_file():
            raise FileNotFoundError(f"no memory store in {directory} (missing {RECORDS_FILE})")
        with _locked(directory):
            try:
                records = RecordStore(directory / RECORDS_FILE)
            except sqlite3.DatabaseError as error:
                raise _damaged(directory, error) from error
            try:
                return cls._open(directory, records, device, dtype, expected_layout)
            except MemlmError:
                records.close()
                raise
            except (sqlite3.DatabaseError, KeyError, TypeError, ValueError, AttributeError, IndexError,
                    RuntimeError) as error:
                # A file that parses but holds nonsense (a damaged row, a layout that is not a layout).
                records.close()
                raise _damaged(directory, error) from error
            except BaseException:
                records.close()
                raise

    @classmethod
    def _open(cls, directory: Path, records: RecordStore, device, dtype, expected_layout) -> KeyValueStore:
        generation = records.generation
        saved_layout = records.get_meta("layout")
        if generation == 0 or saved_layout is None:
            raise CorruptedFileError(f"{directory / RECORDS_FILE} has never been committed by a save")
        layout = StoreLayout.from_dict(saved_layout)
        if expected_layout is not None and layout.specs != expected_layout.specs:
            raise IncompatibleMemoryError(
                f"the memory store in {directory} holds {layout.to_dict()['specs']}, but this model needs "
                f"{expected_layout.to_dict()['specs']} (a memory saved for another model?)")
        records.roll_back_uncommitted()
        vector_file = _vector_file(directory, generation)
        if not vector_file.exists():
            raise CorruptedFileError(f"{vector_file} is missing: the store's vectors for generation {generation}")
        arrays, metadata = load_tensors(vector_file)
        if metadata.get("format") != "memlm-kv" or metadata.get("generation") != generation:
            raise CorruptedFileError(f"{vector_file} is not generation {generation} of a memlm store")
        store = cls(layout, device, dtype)
        store._records.close()
        store._records, store.directory = records, directory
        for kind, row, layer in metadata["groups"]:
            if kind not in layout.specs:
                raise CorruptedFileError(f"{vector_file} holds a group of unknown kind {kind!r}")
            store.groups[(kind, row, layer)] = MemoryGroup.from_arrays(
                layout.specs[kind], layout, arrays, f"{kind}.{row}.{layer}", store.device, dtype)
        store._check_rows_match_vectors()
        store.row_count = 1 + max((row for _, row, _ in store.groups), default=-1)
        store._next_id = records.next_id()
        return store

    def _check_rows_match_vectors(self) -> None:
        vector_ids = torch.cat([group.ids.cpu() for group in self.groups.values()]) if self.groups else torch.empty(0)
        row_ids = torch.tensor(self.records.ids(), dtype=torch.int64)
        missing_rows = int((~torch.isin(vector_ids, row_ids)).sum())
        missing_vectors = int((~torch.isin(row_ids, vector_ids)).sum())
        if missing_rows or missing_vectors:
            raise CorruptedFileError(
                f"memory store in {self.directory} is inconsistent: {missing_rows} vector(s) without a record "
                f"row, {missing_vectors} row(s) without a vector")

    def close(self) -> None:
        self._pending = []
        self._records.close()


def _damaged(directory: Path, error: BaseException) -> MemlmError:
    if isinstance(error, sqlite3.OperationalError) and any(
            word in str(error).lower() for word in ("locked", "busy", "readonly", "full", "unable to open")):
        return storage_error(error, str(directory / RECORDS_FILE))
    return CorruptedFileError(f"the memory store in {directory} is damaged ({type(error).__name__}: {error}); "
                              "restore it from a backup or delete it to start empty")


def _vector_file(directory: Path, generation: int) -> Path:
    return directory / f"vectors-{generation:06d}.safetensors"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the store directory, so two processes never save into it at once."""
    try:
        handle = (directory / LOCK_FILE).open("a")
    except PermissionError as error:
        raise storage_error(error, str(directory / LOCK_FILE), "read" if (directory / LOCK_FILE).exists() else "write"
                            ) from error
    with handle:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"another process has held the lock of the memory store in {directory} for "
                        f"{LOCK_TIMEOUT_S} s ({directory / LOCK_FILE}): wait for its save to finish or stop "
                        "that process, then retry; the last saved state is unchanged") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- one entry point for every backend ---------------------------------------------------------------
def save_store(store: KeyValueStore, location: str | os.PathLike, name: str) -> None:
    """Save `store` as the memory `name` at `location`: a directory (the memory goes to
    `<location>/<name>/`, SQLite + safetensors as always) or a `postgresql://` / `milvus://` URL
    (`memlm.store.backends`)."""
    from memlm.store.backends import check_store_name, is_remote

    check_store_name(name)
    if is_remote(location):
        store.save_to(str(location), name)
    else:
        store.save(Path(location) / name)


def load_store(location: str | os.PathLike, name: str, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, expected_layout: StoreLayout | None = None) -> KeyValueStore:
    """Open the memory `name` that `save_store` saved at `location`."""
    from memlm.store.backends import check_store_name, is_remote

    check_store_name(name)
    if is_remote(location):
        return KeyValueStore.load_from(str(location), name, device, dtype, expected_layout)
    return KeyValueStore.load(Path(location) / name, device, dtype, expected_layout)


def remove_store(location: str | os.PathLike, name: str) -> bool:
    """Forget the memory `name` at `location`; whether one was saved there."""
    import shutil

    from memlm.store.backends import check_store_name, is_remote, open_kv_backend

    check_store_name(name)
    if is_remote(location):
        backend = open_kv_backend(str(location))
        try:
            return backend.remove(name)
        finally:
            backend.close()
    directory = Path(location) / name
    if not (directory / RECORDS_FILE).exists():
        return False
    with _locked(directory):
        (directory / RECORDS_FILE).unlink()
    shutil.rmtree(directory)
    return True
