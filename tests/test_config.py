"""Configs: validated dataclasses that load from YAML, including every file shipped in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest

import memlm
from memlm.config import check_range

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))  # memory configs; train/ is tested in train/


def test_yaml_config_loading(tmp_path):
    path = tmp_path / "memories.yaml"
    path.write_text("memories:\n  - mechanism: recurrent\n    decay: 0.9\n    memory_size: 32\n")
    (config,) = memlm.load_configs(path)
    assert isinstance(config, memlm.RecurrentConfig) and config.decay == 0.9
    path.write_text("memories:\n  - mechanism: recurrent\n    decay: 7\n")
    with pytest.raises(memlm.ConfigError, match="decay"):
        memlm.load_configs(path)
    path.write_text("memories: [unclosed")
    with pytest.raises(memlm.ConfigError, match="YAML"):
        memlm.load_configs(path)


def test_unknown_options_are_named_with_the_known_ones():
    with pytest.raises(memlm.ConfigError, match=r"unknown option\(s\) \['decai'\].*'decay'"):
        memlm.make_config({"mechanism": "recurrent", "decai": 0.9})
    with pytest.raises(memlm.ConfigError, match="no 'mechanism'"):
        memlm.make_config({"decay": 0.9})
    with pytest.raises(memlm.ConfigError, match="list of memories"):
        memlm.load_configs({"memories": {"mechanism": "recurrent"}})


def test_configs_round_trip_through_dicts():
    config = memlm.RecurrentConfig(decay=0.8, memory_size=12, mode="ephemeral")
    assert config.to_dict()["mechanism"] == "recurrent"
    assert memlm.make_config(config.to_dict()) == config
    assert memlm.make_config(config, decay=0.5).decay == 0.5 and config.decay == 0.8  # a copy


@pytest.mark.parametrize("value, low_open, high_open, ok", [
    (0.0, False, False, True), (0.0, True, False, False), (1.0, False, True, False), (0.5, True, True, True),
    (float("nan"), False, False, False), (True, False, False, False), ("0.5", False, False, False),
])
def test_check_range_handles_bounds_and_non_numbers(value, low_open, high_open, ok):
    if ok:
        check_range("x", value, 0.0, 1.0, low_open=low_open, high_open=high_open)
    else:
        with pytest.raises(memlm.ConfigError, match="x must be in"):
            check_range("x", value, 0.0, 1.0, low_open=low_open, high_open=high_open)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    configs = memlm.load_configs(path)
    assert configs and all(isinstance(c, memlm.MemoryConfig) for c in configs)


def test_lm2_settings_become_internal_slots_and_an_external_memory():
    lm2 = Path(__file__).parents[1] / "configs" / "lm2.yaml"
    slots, knn = memlm.load_configs(lm2)
    assert (slots.mechanism, slots.memory_slots, slots.num_mem_heads) == ("slots", 16, 4)
    assert (knn.mechanism, knn.attention, knn.top_k, knn.capacity, knn.chunk_size, knn.update_freq) == (
        "knn", "gated", 32, 1_048_576, 1, 1)
    only_internal = memlm.load_configs({"use_internal_memory": True, "memory_slots": 8, "retrieval_k": 4})
    assert [c.mechanism for c in only_internal] == ["slots"] and only_internal[0].memory_slots == 8
    with pytest.raises(memlm.ConfigError, match="retrievel_k"):
        memlm.load_configs({"model": {"use_external_memory": True, "retrievel_k": 4}})
    with pytest.raises(memlm.ConfigError, match="no memory"):
        memlm.load_configs({"use_internal_memory": False, "use_external_memory": False})
