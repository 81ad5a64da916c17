"""The registry: built-in mechanisms and presets, third-party registration, and lazy imports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

import memlm
from memlm.config import MemoryConfig
from memlm.memories.base import Memory
from memlm.registry import BUILTIN_MECHANISMS, BUILTIN_PRESETS, get_mechanism, unregister_memory


@dataclass
class EchoConfig(MemoryConfig):
    mechanism = "echo-test"


class EchoMemory(Memory):
    """Remembers nothing (registry test only)."""

    config_class = EchoConfig

    def attach(self, layout):
        pass


def test_builtin_mechanisms_resolve_to_their_own_config_and_module():
    for name in BUILTIN_MECHANISMS:
        mechanism = get_mechanism(name)
        assert mechanism.name == name == mechanism.config_class.mechanism
        assert mechanism.module_class.config_class is mechanism.config_class
        assert mechanism.description  # the first line of the module's docstring
    assert set(BUILTIN_MECHANISMS) <= set(memlm.available_mechanisms())


def test_presets_build_configs_and_accept_overrides():
    for name, preset in BUILTIN_PRESETS.items():
        if preset.weights is not None:  # trained weights, not a config (tests/test_presets_shipped.py)
            continue
        config = memlm.make_config(name)
        assert config.mechanism == preset.config["mechanism"]
        assert all(config.to_dict()[key] == value for key, value in preset.config.items())
    assert memlm.make_config("knn-joint", top_k=4).top_k == 4
    assert set(memlm.available_presets()) >= set(BUILTIN_PRESETS)


def test_a_mechanism_defined_outside_memlm_registers_by_its_class():
    registered = memlm.register_memory(EchoMemory)
    try:
        assert registered.name == "echo-test" and "echo-test" in memlm.available_mechanisms()
        assert isinstance(memlm.make_config("echo-test"), EchoConfig)
        memlm.register_memory(EchoMemory)  # registering the same class again is harmless

        class OtherEcho(EchoMemory):
            """Another class under the same name."""

        with pytest.raises(memlm.ConfigError, match="already registered"):
            memlm.register_memory(OtherEcho)
    finally:
        unregister_memory("echo-test")
    assert "echo-test" not in memlm.available_mechanisms()


def test_names_that_would_shadow_are_refused():
    @dataclass
    class Shadow(MemoryConfig):
        mechanism = "recurrent"

    class ShadowMemory(EchoMemory):
        """Pretends to be recurrent."""

        config_class = Shadow

    with pytest.raises(memlm.ConfigError, match="already registered"):
        memlm.register_memory(ShadowMemory)
    with pytest.raises(memlm.ConfigError, match="is a mechanism"):
        memlm.register_preset("knn", {"mechanism": "knn"})

    class Nameless(EchoMemory):
        """Its config declares no name."""

        config_class = MemoryConfig

    with pytest.raises(memlm.ConfigError, match="declares no mechanism name"):
        memlm.register_memory(Nameless)


def test_unknown_names_list_what_exists():
    with pytest.raises(memlm.UnknownMechanismError, match="hippocampus.*available: bank.*presets: .*bank-backbone"):
        memlm.make_config("hippocampus")


def test_importing_memlm_and_the_fact_api_loads_neither_torch_nor_transformers():
    code = ("import sys, memlm, memlm.facts; memlm.available_mechanisms(); memlm.available_presets(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
