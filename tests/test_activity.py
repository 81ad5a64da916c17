"""Memory activity traced over segments and drawn (`memlm inspect`)."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_memory_weights, token_batch
from tiny import tiny_model

import memlm
from memlm.activity import plot_activity, trace_activity


def test_each_inspectable_memory_is_traced_after_every_segment_and_drawn(tokenizer, tmp_path):
    memory_model = memlm.attach(tiny_model("llama"), ["recurrent", "slots", "importance", "knn"], tokenizer=tokenizer)
    randomize_memory_weights(memory_model)
    trace = trace_activity(memory_model, "The cat sat on the mat. " * 6, segment_length=40)
    assert len(trace.segments) == 4 and set(trace.snapshots) == {"recurrent", "slots", "importance"}
    recurrent = trace.snapshots["recurrent"]
    assert [round(s["norm"], 5) for s in recurrent] == [round(float(s["state"].norm()), 5) for s in recurrent]
    assert not torch.equal(recurrent[0]["state"], recurrent[-1]["state"])  # it moved
    assert all(s["slot_change"].shape == (2, 16) for s in trace.snapshots["slots"])
    importance = trace.snapshots["importance"][-1]
    assert importance["scores"].shape[0] == len(importance["tokens"]) == importance["kept"].shape[0]
    assert importance["prefix"] == int(trace.snapshots["importance"][-2]["kept"].sum())  # carried in, scored again
    picture = plot_activity(trace, tmp_path / "activity.png", tokenizer=tokenizer)
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 20_000


def test_nothing_to_inspect_is_a_clear_error(tokenizer):
    with pytest.raises(memlm.ConfigError, match="recurrent, slots or importance"):
        trace_activity(memlm.attach(tiny_model("llama"), "knn", tokenizer=tokenizer), "text")
    with pytest.raises(memlm.ConfigError, match="empty"):
        trace_activity(memlm.attach(tiny_model("llama"), "recurrent"), token_batch(1, length=0))
