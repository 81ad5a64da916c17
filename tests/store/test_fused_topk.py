"""The fused top-k kernel (`memlm.store.fused_topk`), run by Triton's interpreter on the CPU: the same
items as the matrix product + top-k for every shape that changes its blocking (several splits, a
partial last tile, more queries than a block, widths that are not powers of two, k above the count),
the same search through a `MemoryGroup`, and clear errors where it cannot run.

The interpreter is slow (seconds per call): sizes stay small, and the blocking is forced small so that
they still cross tile, split and query-block edges."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="needs Triton (the dev extra installs it)")

from memlm.errors import ConfigError  # noqa: E402
from memlm.store import GroupSpec, StoreLayout  # noqa: E402
from memlm.store import fused_topk as fused  # noqa: E402
from memlm.store.group import MemoryGroup  # noqa: E402
from memlm.store.index import exact_topk  # noqa: E402


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET before Triton loads)."""
    assert fused.interpreting(), "TRITON_INTERPRET must be set before Triton is imported (tests/conftest.py)"
    monkeypatch.setattr(fused, "MIN_KEYS_PER_SPLIT", 64)  # several splits even for a few hundred keys


def same_items(queries, keys, k, **blocks):
    scores, positions = fused.fused_topk(queries, keys, k, **blocks)
    reference_scores, reference_positions = exact_topk(queries.to(keys.dtype).float() @ keys.float().mT, k)
    assert scores.shape == positions.shape == reference_scores.shape
    assert positions.dtype == torch.int64 and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference_scores, rtol=1e-5, atol=1e-4)  # best first, like topk
    assert torch.equal(positions.sort(-1).values, reference_positions.sort(-1).values)
    chosen = torch.gather(queries.to(keys.dtype).float() @ keys.float().mT, -1, positions)
    torch.testing.assert_close(chosen, scores, rtol=1e-5, atol=1e-4)  # each score is its position's


@pytest.mark.parametrize(("heads", "queries", "items", "dim", "k", "dtype"), [
    (2, 1, 200, 64, 8, torch.float32),  # a decode step: one query, four splits, a partial last tile
    (2, 20, 200, 48, 10, torch.float16),  # two query blocks, a width that is not a power of two
    (1, 5, 40, 64, 32, torch.float32),  # fewer keys than one tile
    (1, 3, 16, 32, 16, torch.float32),  # k = every slot kept = one whole tile, entering at once
])
def test_the_same_items_as_a_matrix_product_and_topk(interpreter, heads, queries, items, dim, k, dtype):
    generator = torch.Generator().manual_seed(items + k)
    same_items(torch.randn(heads, queries, dim, generator=generator),
               torch.randn(heads, items, dim, generator=generator).to(dtype), k, block_m=16, block_n=16)


def test_k_above_the_count_returns_every_item_once(interpreter):
    keys = torch.randn(1, 12, 32)
    scores, positions = fused.fused_topk(torch.randn(1, 2, 32), keys, 50, block_n=16)
    assert scores.shape == (1, 2, 12)
    assert torch.equal(positions.sort(-1).values, torch.arange(12).expand(1, 2, 12))


def test_the_best_key_wins_wherever_it_sits(interpreter):
    """One planted key per query, in the first, a middle and the last tile of different splits."""
    keys = torch.randn(1, 256, 32) * 0.1
    queries = torch.randn(1, 3, 32)
    planted = [0, 137, 255]
    for query, position in enumerate(planted):
        keys[0, position] = queries[0, query] * 10
    _, positions = fused.fused_topk(queries, keys, 1, block_m=16, block_n=16)
    assert positions[0, :, 0].tolist() == planted


def test_a_group_searches_the_same_with_either_kernel(interpreter):
    generator = torch.Generator().manual_seed(3)
    keys = torch.randn(2, 150, 32, generator=generator)
    queries = torch.randn(2, 6, 32, generator=generator)
    found = {}
    for kernel in ("torch", "triton"):
        layout = StoreLayout({"attention": GroupSpec(2, 32, 32)}, "torch", {"dtype": "float32", "kernel": kernel})
        group = MemoryGroup(layout.specs["attention"], layout, torch.device("cpu"), torch.float32)
        origins = torch.stack([torch.zeros(150, dtype=torch.int64), torch.arange(150)], dim=1)
        group.add(torch.arange(1, 151), keys, keys, origins, heads_first=True)
        found[kernel] = group.search_positions(queries, 5, limit=120)  # the newest 30 stay out
    assert group._fused
    torch.testing.assert_close(found["triton"].scores, found["torch"].scores, rtol=1e-5, atol=1e-4)
    assert torch.equal(found["triton"].positions.sort(-1).values, found["torch"].positions.sort(-1).values)
    assert int(found["triton"].positions.max()) < 120


def test_auto_leaves_the_interpreter_to_tests(interpreter):
    spec = GroupSpec(1, 16, 16)
    auto = MemoryGroup(spec, StoreLayout({"attention": spec}, "torch", {"kernel": "auto"}), torch.device("cpu"),
                       torch.float32)
    assert not auto._fused


def test_triton_where_it_cannot_run_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU without the interpreter
    spec = GroupSpec(1, 16, 16)
    with pytest.raises(ConfigError, match="kernel='triton' needs a CUDA device"):
        MemoryGroup(spec, StoreLayout({"attention": spec}, "torch", {"kernel": "triton"}), torch.device("cpu"),
                    torch.float32)
    auto = MemoryGroup(spec, StoreLayout({"attention": spec}, "torch", {"kernel": "auto"}), torch.device("cpu"),
                       torch.float32)
    assert not auto._fused
    with pytest.raises(ConfigError, match="kernel must be one of"):
        MemoryGroup(spec, StoreLayout({"attention": spec}, "torch", {"kernel": "cuda"}), torch.device("cpu"),
                    torch.float32)


def test_l2_groups_keep_the_matrix_product(interpreter):
    spec = GroupSpec(1, 16, None, "l2")
    group = MemoryGroup(spec, StoreLayout({"lm": spec}, "torch", {"kernel": "triton"}), torch.device("cpu"),
                        torch.float32)
    assert not group._fused


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        fused.fused_topk(torch.randn(2, 1, 16), torch.randn(3, 10, 16), 4)
