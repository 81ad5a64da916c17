"""One memory group, apart from search: its layout's checks, what `add` accepts, the runs of one sequence,
`latest`, eviction order, versions, dtypes, and what `from_arrays` refuses."""

from __future__ import annotations

import re

import pytest
import torch

from memlm.errors import ConfigError, CorruptedFileError, IncompatibleMemoryError
from memlm.store import GroupSpec, StoreLayout
from memlm.store.group import MemoryGroup

CPU = torch.device("cpu")


def make_group(heads: int = 2, dim: int = 4, value_dim: int | None = 4, metric: str = "ip",
               backend: str = "torch", dtype: torch.dtype = torch.float32, **layout) -> MemoryGroup:
    store = StoreLayout({"kind": GroupSpec(heads, dim, value_dim, metric)}, backend, **layout)
    return MemoryGroup(store.specs["kind"], store, CPU, dtype)


def add(group: MemoryGroup, first_id: int, count: int, sequence: int, seed: int = 0) -> torch.Tensor:
    """Add `count` items of `sequence` with ids first_id..; returns their keys (count, heads, dim)."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(count, group.spec.heads, group.spec.key_dim, generator=generator)
    values = (torch.randint(0, 1000, (count,), generator=generator) if group.spec.value_dim is None
              else torch.randn(count, group.spec.heads, group.spec.value_dim, generator=generator))
    origins = torch.stack([torch.full((count,), sequence), torch.arange(count)], dim=1)
    group.add(torch.arange(first_id, first_id + count), keys, values, origins)
    return keys


@pytest.mark.parametrize("capacity", [0, -3, 2.5, "3"])
def test_a_layout_refuses_a_capacity_that_is_not_a_positive_integer(capacity):
    with pytest.raises(ConfigError, match=f"capacity must be a positive integer or None, got {capacity!r}"):
        StoreLayout({}, capacity=capacity).validate()


def test_a_layout_takes_a_capacity_of_one_and_refuses_an_unknown_eviction():
    StoreLayout({}, capacity=1).validate()
    StoreLayout({}, capacity=None).validate()
    with pytest.raises(ConfigError, match=r"eviction must be one of \('oldest', 'least_used'\), got 'newest'"):
        StoreLayout({}, eviction="newest").validate()


def test_add_takes_items_first_by_default_and_refuses_keys_of_another_shape():
    group = make_group(heads=2, dim=4)
    keys = add(group, 0, 5, sequence=0)  # (5, 2, 4): items first
    assert torch.equal(group.keys, keys.transpose(0, 1))
    for wrong in (torch.randn(3, 2, 3), torch.randn(3, 3, 4), torch.randn(3, 4)):
        with pytest.raises(IncompatibleMemoryError,
                           match=re.escape(f"keys of shape {tuple(wrong.shape)} do not fit heads=2, width=4")):
            group.add(torch.arange(3), wrong, torch.randn(3, 2, 4), torch.zeros(3, 2, dtype=torch.int64))
    assert len(group) == 5


def test_the_latest_run_of_a_sequence_spans_adds_and_survives_removals():
    group = make_group()
    add(group, 0, 3, sequence=7)
    add(group, 3, 2, sequence=7)
    assert group.latest_count(7, 10) == 5 and group.latest_count(7, 4) == 4
    add(group, 5, 1, sequence=8)
    add(group, 6, 2, sequence=7)
    assert group.latest_count(7, 10) == 2 and group.latest_count(8, 10) == 0
    group.remove(torch.tensor([7]))
    count = group.latest_count(7, 10)
    assert count == 1 and type(count) is int  # a slice bound downstream
    group.remove(torch.tensor([5]))  # the item between the two runs: they join
    assert group.latest_count(7, 10) == 6


def test_latest_gives_the_newest_items_of_value_and_token_groups():
    for value_dim in (4, None):
        group = make_group(value_dim=value_dim)
        add(group, 0, 6, sequence=3)
        ids, values, origins = group.latest(2)
        assert ids.tolist() == [4, 5] and origins[:, 1].tolist() == [4, 5]
        expected = group.values[4:] if value_dim is None else group.values[:, 4:]
        assert torch.equal(values, expected)
        ids, values, _ = group.latest(100)  # more than there are: all of them
        assert ids.tolist() == list(range(6)) and values.shape[-2 if value_dim else 0] == 6


def test_oldest_eviction_ignores_hits_and_least_used_prefers_the_unused():
    group = make_group(heads=1, eviction="least_used")
    keys = add(group, 0, 6, sequence=0)
    group.search_positions(keys[:2].transpose(0, 1), 1)  # each query finds itself: items 0 and 1 are hit
    assert group.eviction_candidates(3, "oldest").tolist() == [0, 1, 2]
    assert group.eviction_candidates(3, "least_used").tolist() == [2, 3, 4]


def test_every_group_and_every_change_has_a_version_of_its_own():
    """Readers cache what they derive from a group under its version: no two states may share one."""
    first, second = make_group(), make_group()
    versions = [first.version, second.version]
    add(first, 0, 3, sequence=0)
    versions.append(first.version)
    assert first.remove(torch.tensor([99])) == 0 and first.version == versions[-1]  # nothing removed
    assert first.remove(torch.tensor([1])) == 1
    versions.append(first.version)
    assert all(isinstance(version, int) for version in versions) and len(set(versions)) == len(versions)


def test_values_keep_the_store_dtype_and_keys_the_search_dtype():
    group = make_group(dtype=torch.float64, backend_options={"dtype": "bfloat16"}, metric="l2")
    keys = add(group, 0, 5, sequence=0)
    assert group.values.dtype == torch.float64 and group.keys.dtype == torch.bfloat16
    assert group.origins.dtype == torch.int64 and group._norms.data.dtype == torch.float32
    arrays = group.to_arrays("kind.0")
    assert arrays["kind.0.h0.vectors"].dtype == torch.float32  # the format TorchIndex writes
    assert torch.equal(arrays["kind.0.h1.vectors"], keys[:, 1].to(torch.bfloat16).float())
    assert make_group(dtype=torch.float64).keys.dtype == torch.float64  # no search dtype: the store's


def test_saved_squared_norms_are_kept_rather_than_recomputed_from_lower_precision_keys():
    """L2 groups take the norms before keys are stored in bfloat16: a reloaded group scores exactly as before."""
    group = make_group(metric="l2", backend_options={"dtype": "bfloat16"})
    add(group, 0, 30, sequence=0)
    queries = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1))
    store = StoreLayout({"kind": group.spec}, "torch", {"dtype": "bfloat16"})
    loaded = MemoryGroup.from_arrays(group.spec, store, group.to_arrays("kind.0"), "kind.0", CPU, torch.float32)
    assert torch.equal(loaded.search_positions(queries, 5).scores, group.search_positions(queries, 5).scores)
    recomputed = group.keys.float().pow(2).sum(-1)
    assert not torch.equal(recomputed, group._norms.data)  # the test can tell the two apart


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
def test_from_arrays_names_what_is_wrong_with_a_damaged_group(backend):
    group = make_group(backend=backend)
    add(group, 0, 4, sequence=0)
    store = StoreLayout({"kind": group.spec}, backend)
    arrays = group.to_arrays("kind.0")

    def load(damaged):
        return MemoryGroup.from_arrays(group.spec, store, damaged, "kind.0", CPU, torch.float32)

    with pytest.raises(CorruptedFileError, match=r"saved memory group kind.0 lacks 'kind.0.hits'"):
        load({name: array for name, array in arrays.items() if name != "kind.0.hits"})
    with pytest.raises(CorruptedFileError, match=r"saved memory group kind.0: values of shape \(4, 3, 4\)"):
        load({**arrays, "kind.0.values": torch.zeros(4, 3, 4)})
    with pytest.raises(CorruptedFileError, match=r"saved memory group kind.0: index sizes do not match its ids"):
        load({**arrays, "kind.0.ids": torch.arange(5)})
    if backend == "torch":  # same count, other ids in one head
        with pytest.raises(CorruptedFileError, match="index sizes do not match its ids"):
            load({**arrays, "kind.0.h1.ids": torch.arange(10, 14)})
