"""The registry of memory mechanisms (PEFT-style: name -> config class + module class).

Adding a mechanism is one file in `memlm/memories/` that ends with::

    register_memory("name", NameConfig, NameMemory)

and one import line in `memlm/memories/__init__.py`. The contract tests iterate the registry, so
the new mechanism is tested on every tiny backbone without further changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memlm.config import MemoryConfig
from memlm.errors import ConfigError, UnknownMechanismError

if TYPE_CHECKING:
    from memlm.memories.base import Memory


@dataclass(frozen=True)
class Mechanism:
    name: str
    config_class: type[MemoryConfig]
    module_class: type[Memory]
    description: str


_REGISTRY: dict[str, Mechanism] = {}


def register_memory(name: str, config_class: type[MemoryConfig], module_class: type[Memory]) -> None:
    """Make a mechanism available to `attach()`, the CLI and the contract tests."""
    if name in _REGISTRY and _REGISTRY[name].module_class is not module_class:
        raise ConfigError(f"a different mechanism is already registered as {name!r}")
    config_class.mechanism = name
    doc = (module_class.__doc__ or "").strip().splitlines()
    _REGISTRY[name] = Mechanism(name, config_class, module_class, doc[0] if doc else "")


def unregister_memory(name: str) -> None:
    """Remove a mechanism (used by tests that register throwaway mechanisms)."""
    _REGISTRY.pop(name, None)


def _load_builtin_mechanisms() -> None:
    import memlm.memories  # noqa: F401  (each module registers itself on import)


def available_mechanisms() -> list[str]:
    _load_builtin_mechanisms()
    return sorted(_REGISTRY)


def get_mechanism(name: str) -> Mechanism:
    _load_builtin_mechanisms()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMechanismError(
            f"unknown memory mechanism {name!r}; available: {', '.join(sorted(_REGISTRY))}"
            + (f"; presets: {', '.join(sorted(_PRESETS))}" if _PRESETS else "")
        ) from None


_PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, config: dict[str, Any], description: str = "") -> None:
    """Name a ready-made config (e.g. "knn-joint") usable wherever a mechanism name is."""
    _PRESETS[name] = {**config, "_description": description}


def available_presets() -> dict[str, str]:
    _load_builtin_mechanisms()
    return {name: preset["_description"] for name, preset in sorted(_PRESETS.items())}


def make_config(spec: MemoryConfig | str | dict[str, Any], **overrides: Any) -> MemoryConfig:
    """Turn a config, a mechanism or preset name, or a dict with a `mechanism` key into a
    validated config."""
    if isinstance(spec, MemoryConfig):
        return spec.replace(**overrides) if overrides else spec
    if isinstance(spec, str):
        _load_builtin_mechanisms()
        if spec in _PRESETS:
            preset = {k: v for k, v in _PRESETS[spec].items() if k != "_description"}
            return make_config({**preset, **overrides})
        return get_mechanism(spec).config_class.from_dict(overrides)
    if isinstance(spec, dict):
        if "mechanism" not in spec:
            raise ConfigError(f"memory config {spec!r} has no 'mechanism' key")
        return get_mechanism(spec["mechanism"]).config_class.from_dict({**spec, **overrides})
    raise ConfigError(f"cannot build a memory config from {type(spec).__name__}")
