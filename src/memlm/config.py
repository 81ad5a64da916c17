"""Memory configs: one dataclass per mechanism, validated on construction, loadable from YAML.

A YAML file lists the memories to attach::

    memories:
      - mechanism: recurrent
        decay: 0.95
        memory_size: 256

or describes them with the LM2 paper's names (internal slots plus an external FAISS memory), under
`model:` or at the top level (see `lm2_configs` and configs/lm2.yaml)::

    model:
      use_internal_memory: true
      memory_slots: 16
      use_external_memory: true
      retrieval_k: 32
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from memlm.errors import ConfigError

MODES = ("persistent", "ephemeral")


@dataclass
class MemoryConfig:
    """Fields shared by every mechanism.

    Args:
        mode: "persistent" keeps the memory's state across `generate()`/`memorize()` calls until
            `reset()`; "ephemeral" clears it at the start of each such call.
    """

    mechanism: ClassVar[str] = ""
    mode: str = "persistent"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` for out-of-range values. Subclasses extend this."""
        if self.mode not in MODES:
            raise ConfigError(f"{self.mechanism}: mode must be one of {MODES}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MemoryConfig:
        if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
            raise ConfigError(f"{cls.mechanism}: options must be a mapping of names to values, got {values!r}")
        values = {k: v for k, v in values.items() if k != "mechanism"}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ConfigError(
                f"{cls.mechanism}: unknown option(s) {unknown}; known options: {sorted(known)}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> MemoryConfig:
        return dataclasses.replace(self, **changes)


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False, mechanism: str = "") -> None:
    """Raise `ConfigError` unless `value` lies in the interval (brackets set by the *_open flags)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    above = is_number and (value > low if low_open else value >= low)
    below = is_number and (value < high if high_open else value <= high)
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        prefix = f"{mechanism}: " if mechanism else ""
        raise ConfigError(f"{prefix}{name} must be in {interval}, got {value!r}")


# The LM2 + external memory settings, by the names the LM2 design uses, and what they become.
LM2_KEYS = {
    "use_internal_memory": None, "memory_slots": ("slots", "memory_slots"), "num_mem_heads": ("slots", "num_mem_heads"),
    "memory_layers": ("slots", "layers"), "use_external_memory": None,
    "external_memory_size": ("knn", "capacity"), "retrieval_k": ("knn", "top_k"), "chunk_size": ("knn", "chunk_size"),
    "external_memory_update_freq": ("knn", "update_freq"), "external_memory_layers": ("knn", "layers"),
}


def lm2_configs(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Memory specs from LM2-style settings: `slots` if `use_internal_memory`, a gated `knn` if
    `use_external_memory` (kNN attention whose per-head gate is learned, as LM2's memory gate is)."""
    unknown = sorted(set(settings) - set(LM2_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown LM2 setting(s) {unknown}; known: {sorted(LM2_KEYS)}")
    specs: dict[str, dict[str, Any]] = {}
    if settings.get("use_internal_memory", False):
        specs["slots"] = {"mechanism": "slots"}
    if settings.get("use_external_memory", False):
        specs["knn"] = {"mechanism": "knn", "attention": "gated"}
    for key, value in settings.items():
        target = LM2_KEYS[key]
        if target is not None and target[0] in specs:
            specs[target[0]][target[1]] = value
    if not specs:
        raise ConfigError("LM2 settings turn on no memory: set use_internal_memory and/or use_external_memory")
    return list(specs.values())


def load_configs(source: str | os.PathLike | dict | list) -> list[MemoryConfig]:
    """Build memory configs from a YAML file path, a parsed dict (`{"memories": [...]}`, or LM2-style
    settings under `model:` or at the top level) or a list."""
    from memlm.registry import make_config

    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        try:
            source = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{source} is not valid YAML: {error}") from error
    if isinstance(source, dict) and "memories" not in source:
        settings = source.get("model", source)
        if isinstance(settings, dict) and {"use_internal_memory", "use_external_memory"} & set(settings):
            source = lm2_configs(settings)
    if isinstance(source, dict):
        source = source.get("memories", [])
    if not isinstance(source, list):
        raise ConfigError("a memory config must be a list of memories or {'memories': [...]}")
    return [make_config(entry) for entry in source]
