"""A small key/value store with real hit counts, shared by the store tests (tests/ is on the path)."""

from __future__ import annotations

import torch

from memlm.store import GroupSpec, KeyValueStore, StoreLayout


def layout(width: int = 8) -> StoreLayout:
    # least_used eviction counts hits, so a round trip must keep them (a store saving zeros fails `same`)
    return StoreLayout({"attention": GroupSpec(2, width, 2 * width, "ip"), "lm": GroupSpec(1, 12, None, "l2")},
                       eviction="least_used")


def filled(user: str, items: int = 20, seed: int = 0, width: int = 8) -> KeyValueStore:
    generator = torch.Generator().manual_seed(seed)
    store = KeyValueStore(layout(width))
    for row in range(2):
        store.add("attention", row, [3, 5], [torch.randn(items, 2, width, generator=generator) for _ in range(2)],
                  [torch.randn(items, 2, 2 * width, generator=generator) for _ in range(2)],
                  [{"user": user, "session": "s", "sequence": 1, "position": i, "token": i, "text": f"{user} {i}"}
                   for i in range(items)])
    store.add("lm", 0, -1, torch.randn(items, 1, 12, generator=generator), torch.arange(items) + 100,
              [{"user": user, "sequence": 2, "position": i, "token": 100 + i, "text": f"lm {i}"}
               for i in range(items)])
    store.search("attention", 0, 3, torch.randn(2, 4, width, generator=generator), k=3)  # some hits
    store.search("lm", 0, -1, torch.randn(1, 2, 12, generator=generator), k=2)
    for key in (("attention", 0, 3), ("lm", 0, -1)):
        assert store.groups[key]._hits.data.sum() > 0  # the round trips below carry real hit counts
    return store


def same(a: KeyValueStore, b: KeyValueStore, emptied_dropped: bool = False) -> None:
    """`b` holds what `a` holds: every group's ids, keys, values, origins and hit counts, and the records.
    With `emptied_dropped` the groups `a` emptied are expected missing from `b` (a save skips them)."""
    kept = [key for key, group in a.groups.items() if len(group) or not emptied_dropped]
    assert sorted(kept) == sorted(b.groups)
    for key in kept:
        group, other = a.groups[key], b.groups[key]
        assert torch.equal(group.ids, other.ids)
        assert torch.equal(group.keys.float(), other.keys.float())
        assert torch.equal(group.values, other.values)
        assert torch.equal(group.origins, other.origins)
        assert torch.equal(group._hits.data, other._hits.data)
    assert [r.to_dict() for r in a.records.select()] == [r.to_dict() for r in b.records.select()]
