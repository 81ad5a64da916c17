"""`KeyValueStore`: vector indexes + values + SQLite provenance, with capacity and atomic saves.

Vectors are organised in *groups*, one per (kind, batch row, layer):

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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError
from memlm.serialization import load_tensors, save_tensors
from memlm.store.index import GrowableRows, VectorIndex, index_from_arrays, make_index
from memlm.store.records import Record, RecordFilter, RecordStore

RECORDS_FILE = "records.sqlite"
LOCK_FILE = ".lock"
KV_EVICTION_POLICIES = ("oldest", "least_used")


@dataclass(frozen=True)
class GroupSpec:
    """Shape of the groups of one kind: `value_dim=None` means values are token ids."""

    heads: int
    key_dim: int
    value_dim: int | None
    metric: str = "ip"


@dataclass
class StoreLayout:
    specs: dict[str, GroupSpec]
    backend: str = "torch"
    backend_options: dict[str, Any] = field(default_factory=dict)
    capacity: int | None = None
    eviction: str = "oldest"

    def validate(self) -> None:
        if self.eviction not in KV_EVICTION_POLICIES:
            raise ConfigError(f"eviction must be one of {KV_EVICTION_POLICIES}, got {self.eviction!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ConfigError(f"capacity must be a positive integer or None, got {self.capacity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "specs": {kind: asdict(spec) for kind, spec in self.specs.items()}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StoreLayout:
        specs = {kind: GroupSpec(**spec) for kind, spec in values["specs"].items()}
        return cls(**{**values, "specs": specs})


GroupKey = tuple[str, int, int]  # (kind, row, layer)


class SearchResult(NamedTuple):
    """Top-k of each query: scores (H, Q, k) with -inf where nothing was found, values
    (H, Q, k, value_dim) or token ids (H, Q, k), valid (H, Q, k), origins (H, Q, k, 2), ids (H, Q, k)."""

    scores: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    origins: torch.Tensor
    ids: torch.Tensor


class MemoryGroup:
    """The vectors of one (kind, row, layer): one index per head, shared ids, values, use counts."""

    def __init__(self, spec: GroupSpec, layout: StoreLayout, device: torch.device, dtype: torch.dtype):
        self.spec = spec
        options = _index_options(layout, device, dtype)
        self.indexes: list[VectorIndex] = [
            make_index(layout.backend, spec.key_dim, spec.metric, **options) for _ in range(spec.heads)]
        self._ids = GrowableRows((), device, torch.int64)  # ascending: ids are allocated in order
        value_shape = () if spec.value_dim is None else (spec.heads, spec.value_dim)
        self._values = GrowableRows(value_shape, device, torch.int64 if spec.value_dim is None else dtype)
        self._hits = GrowableRows((), device, torch.int64)
        self._origins = GrowableRows((2,), device, torch.int64)  # (sequence, position) of each item

    def __len__(self) -> int:
        return self._ids.size

    @property
    def ids(self) -> torch.Tensor:
        return self._ids.data

    def add(self, ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, origins: torch.Tensor) -> None:
        """ids (N,), keys (N, heads, key_dim), values (N, heads, value_dim) or (N,) token ids,
        origins (N, 2): the (sequence, position) each item came from."""
        if keys.shape[1:] != (self.spec.heads, self.spec.key_dim):
            raise IncompatibleMemoryError(
                f"keys of shape {tuple(keys.shape)} do not fit heads={self.spec.heads}, width={self.spec.key_dim}")
        for head, index in enumerate(self.indexes):
            index.add(keys[:, head], ids)
        self._ids.append(ids)
        self._values.append(values)
        self._hits.append(torch.zeros_like(ids))
        self._origins.append(origins)

    def search(self, queries: torch.Tensor, k: int, below_id: int | None = None) -> SearchResult:
        """queries (heads, Q, key_dim) -> top-k of each query in its head's index; with `below_id`,
        the top-k among items with smaller ids only (the caller handles the newer ones itself)."""
        device = self._ids.data.device
        excluded = 0 if below_id is None else int((self.ids >= below_id).sum())
        scores, found = zip(*(index.search(queries[head], k + excluded) for head, index in enumerate(self.indexes)),
                            strict=True)
        scores = torch.stack(scores).to(device)  # (H, Q, k + excluded)
        found = torch.stack(found).to(device)  # (H, Q, k + excluded)
        if excluded:  # drop the excluded ids, keep the best k of the rest (still best first)
            scores, best = scores.masked_fill(found >= below_id, float("-inf")).topk(k, dim=-1)
            found = found.gather(-1, best).masked_fill(torch.isinf(scores), -1)
        valid = found >= 0
        positions = torch.searchsorted(self.ids, found.clamp(min=0)).clamp(max=max(len(self) - 1, 0))
        valid &= self.ids[positions] == found  # guards against ids an ANN index still returns after removal
        self._hits.data.index_add_(0, positions[valid], torch.ones_like(positions[valid]))
        if self.spec.value_dim is None:
            values = torch.where(valid, self._values.data[positions], 0)  # (H, Q, k) token ids
        else:
            head_index = torch.arange(self.spec.heads, device=device).view(-1, 1, 1).expand_as(positions)
            values = self._values.data[positions, head_index]  # (H, Q, k, value_dim)
            values = values * valid.unsqueeze(-1).to(values.dtype)
        return SearchResult(scores.masked_fill(~valid, float("-inf")), values, valid, self._origins.data[positions],
                            found)

    def latest(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `count` most recently added items: ids (n,), values (n, ...), origins (n, 2)."""
        return self.ids[-count:], self._values.data[-count:], self._origins.data[-count:]

    def remove(self, ids: torch.Tensor) -> int:
        keep = ~torch.isin(self.ids, ids.to(self.ids.device))
        removed = len(self) - int(keep.sum())
        if removed:
            for index in self.indexes:
                index.remove(ids)
            for rows in (self._ids, self._values, self._hits, self._origins):
                rows.keep(keep)
        return removed

    def eviction_candidates(self, count: int, policy: str) -> torch.Tensor:
        # Copies, not views: removing compacts the id buffer in place.
        if policy == "oldest":
            return self.ids[:count].clone()
        # Least used first; among equals the oldest (a stable sort keeps id order).
        order = torch.sort(self._hits.data, stable=True).indices
        return self.ids[order[:count]].clone()

    def to_arrays(self, prefix: str) -> dict[str, torch.Tensor]:
        arrays = {f"{prefix}.ids": self.ids.cpu(), f"{prefix}.values": self._values.data.cpu(),
                  f"{prefix}.hits": self._hits.data.cpu(), f"{prefix}.origins": self._origins.data.cpu()}
        for head, index in enumerate(self.indexes):
            for name, array in index.to_arrays().items():
                arrays[f"{prefix}.h{head}.{name}"] = torch.from_numpy(np.ascontiguousarray(array))
        return arrays

    @classmethod
    def from_arrays(cls, spec: GroupSpec, layout: StoreLayout, arrays: dict[str, torch.Tensor], prefix: str,
                    device: torch.device, dtype: torch.dtype) -> MemoryGroup:
        group = cls(spec, layout, device, dtype)
        options = _index_options(layout, device, dtype)
        for head in range(spec.heads):
            head_prefix = f"{prefix}.h{head}."
            head_arrays = {name[len(head_prefix):]: tensor.numpy() for name, tensor in arrays.items()
                           if name.startswith(head_prefix)}
            group.indexes[head] = index_from_arrays(layout.backend, spec.key_dim, spec.metric, options, head_arrays)
        try:
            group._ids.append(arrays[f"{prefix}.ids"])
            group._values.append(arrays[f"{prefix}.values"])
            group._hits.append(arrays[f"{prefix}.hits"])
            group._origins.append(arrays[f"{prefix}.origins"])
        except KeyError as error:
            raise CorruptedFileError(f"saved memory group {prefix} lacks {error}") from None
        if any(len(index) != len(group) for index in group.indexes):
            raise CorruptedFileError(f"saved memory group {prefix}: index sizes do not match its ids")
        return group


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
        self.records = RecordStore(None)
        self.directory: Path | None = None
        self._next_id = 1
        self.row_count = 0  # batch rows that have ever been written (partitions)

    # --- writing -----------------------------------------------------------------------------
    def add(self, kind: str, row: int, layer: int | list[int], keys: torch.Tensor | list[torch.Tensor],
            values: torch.Tensor | list[torch.Tensor], records: list[dict[str, Any]]) -> torch.Tensor:
        """Store N items (keys (N, heads, key_dim)); `records` gives each one's provenance fields
        (user, session, sequence, position, token, length, text, context). Returns the new ids.

        With a list of layers (and one keys/values tensor per layer) the items are stored in every
        one of those layers under the same ids and one record each (its `layer` is -1): deleting
        or evicting an item then removes it from all layers at once."""
        if kind not in self.layout.specs:
            raise ConfigError(f"this store holds kinds {sorted(self.layout.specs)}, not {kind!r}")
        layers = [layer] if isinstance(layer, int) else list(layer)
        keys_per_layer = [keys] if isinstance(keys, torch.Tensor) else list(keys)
        values_per_layer = [values] if isinstance(values, torch.Tensor) else list(values)
        count = keys_per_layer[0].shape[0]
        if len(records) != count or any(k.shape[0] != count for k in keys_per_layer):
            raise ConfigError(f"{count} vectors but {len(records)} records")
        if count == 0:
            return torch.empty(0, dtype=torch.int64)
        ids = torch.arange(self._next_id, self._next_id + count, dtype=torch.int64)
        now = time.time()
        record_layer = layers[0] if isinstance(layer, int) else -1
        self.records.insert(
            Record(id=int(i), kind=kind, layer=record_layer, row=row, created=now, user=r.get("user"),
                   session=r.get("session"), sequence=int(r.get("sequence", 0)), position=int(r.get("position", 0)),
                   token=int(r.get("token", -1)), length=int(r.get("length", 1)), text=str(r.get("text", "")),
                   context=str(r.get("context", "")))
            for i, r in zip(ids.tolist(), records, strict=True))
        self._next_id += count
        self.row_count = max(self.row_count, row + 1)
        origins = torch.tensor([[int(r.get("sequence", 0)), int(r.get("position", 0))] for r in records])
        evict = None
        for layer_index, layer_keys, layer_values in zip(layers, keys_per_layer, values_per_layer, strict=True):
            group_key = (kind, row, layer_index)
            if group_key not in self.groups:
                self.groups[group_key] = MemoryGroup(self.layout.specs[kind], self.layout, self.device, self.dtype)
            group = self.groups[group_key]
            group.add(ids.to(self.device), layer_keys, layer_values, origins)
            capacity = self.layout.capacity
            if evict is None and capacity is not None and len(group) > capacity:
                evict = group.eviction_candidates(len(group) - capacity, self.layout.eviction)
        if evict is not None:
            self._remove(evict)
        return ids

    def _remove(self, ids: torch.Tensor) -> int:
        removed = sum(group.remove(ids) for group in self.groups.values())
        self.records.mark_deleted(ids.tolist())
        return removed

    def delete(self, where: RecordFilter) -> int:
        """Delete matching items (rows and vectors); return how many."""
        ids = self.records.ids(where)
        if not ids:
            return 0
        self._remove(torch.tensor(ids, dtype=torch.int64))
        return len(ids)

    def clear(self) -> None:
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
                self.records.close()
                self.records = RecordStore(directory / RECORDS_FILE)
                self.directory = directory
            for stale in directory.glob("vectors-*.safetensors"):
                if stale != _vector_file(directory, generation):
                    stale.unlink(missing_ok=True)
        return directory

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
            records = RecordStore(directory / RECORDS_FILE)
            try:
                return cls._open(directory, records, device, dtype, expected_layout)
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
        store.records.close()
        store.records, store.directory = records, directory
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
        self.records.close()


def _index_options(layout: StoreLayout, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Index constructor options; the torch backend lives on the store's device, in the store's
    dtype unless `backend_options["dtype"]` names another (e.g. "bfloat16": half the bytes to read
    per query, and CPUs with bf16 units multiply it several times faster)."""
    options = dict(layout.backend_options)
    search_dtype = options.pop("dtype", None)  # FAISS always searches float32
    if layout.backend == "torch":
        options.update(device=device, dtype=getattr(torch, search_dtype) if search_dtype else dtype)
    return options


def _vector_file(directory: Path, generation: int) -> Path:
    return directory / f"vectors-{generation:06d}.safetensors"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the store directory, so two processes never save into it at once."""
    with (directory / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
