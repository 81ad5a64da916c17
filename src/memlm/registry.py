"""The registry of memory mechanisms and presets (PEFT-style: name -> config class + module class).

One source of truth: the built-in mechanisms and presets are the two tables below. A mechanism's
config declares its name (`mechanism = "recurrent"`), its module declares its config
(`config_class = RecurrentConfig`), and modules are imported only when first asked for. Adding a
built-in mechanism is one file in `memlm/memories/` plus one line in `BUILTIN_MECHANISMS`; code
outside memlm calls `register_memory(ModuleClass)`. The contract tests iterate `available_mechanisms()`,
so a new mechanism is tested on every tiny backbone without further changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memlm.config import MemoryConfig
from memlm.errors import ConfigError, UnknownMechanismError

if TYPE_CHECKING:
    from memlm.memories.base import Memory

BUILTIN_MECHANISMS: dict[str, str] = {
    "recurrent": "memlm.memories.recurrent:RecurrentMemory",
    "slots": "memlm.memories.slots:SlotsMemory",
    "knn": "memlm.memories.knn:KnnMemory",
    "bank": "memlm.memories.bank:BankMemory",
    "importance": "memlm.memories.importance:ImportanceMemory",
}


@dataclass(frozen=True)
class Preset:
    """A ready-made config usable wherever a mechanism name is, or, with `weights`, trained memories
    shipped in the package (`memlm/presets/<weights>/`: configs, weights, the training config and curves)."""

    config: dict[str, Any]
    description: str = ""
    weights: str | None = None

    @property
    def path(self) -> Path | None:
        return None if self.weights is None else Path(__file__).parent / "presets" / self.weights


@dataclass(frozen=True)
class Pretrained:
    """Trained weights to attach — a shipped preset's folder or a `memlm train` output — with settings
    of its memories changed first (e.g. `{"bank": {"store": "facts.sqlite", "user": "ada"}}`: the chat
    preset's bank on a user's fact store). Accepted wherever a memory spec is."""

    path: Path
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mechanisms(self) -> list[str]:
        """The mechanisms the weights' config attaches."""
        from memlm.serialization import read_json

        adapter = read_json(self.path / "memlm_config.json")
        return [entry.get("mechanism") for entry in adapter.get("memories", [])] if isinstance(adapter, dict) else []


def pretrained_of(spec: Any) -> Pretrained | None:
    """`spec` as trained weights: a `Pretrained`, a trained preset's name, or a folder holding a
    `memlm_config.json`; None for anything else (a mechanism, a config preset, a dict, a config)."""
    if isinstance(spec, Pretrained):
        return spec
    if not isinstance(spec, str):
        return None
    preset = _presets.get(spec)
    if preset is not None:
        return Pretrained(preset.path) if preset.path is not None else None
    folder = Path(spec).expanduser()
    return Pretrained(folder) if (folder / "memlm_config.json").is_file() else None


def _shipped(name: str) -> bool:
    """Whether the trained weights of preset `name` are in the package (a preset is listed only then)."""
    return (Path(__file__).parent / "presets" / name / "memory_weights.safetensors").is_file()


BUILTIN_PRESETS: dict[str, Preset] = {
    "knn-joint": Preset({"mechanism": "knn", "attention": "joint", "layers": "all", "recent": 512},
                        "training-free kNN attention at every layer: the latest 512 items plus the top-32 older "
                        "ones, each at its true distance"),
    "knn-fast": Preset({"mechanism": "knn", "attention": "joint", "layers": "all", "recent": 512, "search_every": 3,
                        "backend_options": {"dtype": "bfloat16", "kernel": "auto"}},
                       "knn-joint with one search per 3 layers (93.5% of its perplexity gain measured on CPU) and "
                       "the fused Triton top-k on GPUs"),
    "knn-lm": Preset({"mechanism": "knn", "attention": "off", "knn_lm": True},
                     "training-free kNN-LM over final hidden states"),
    "knn-joint-lm": Preset({"mechanism": "knn", "attention": "joint", "layers": "all", "recent": 512,
                            "knn_lm": True}, "knn-joint and knn-lm together"),
    "bank-latent": Preset({"mechanism": "bank", "fusion": "latent"},
                          "bank fused only through the gated latent reader (needs training)"),
    "bank-backbone": Preset({"mechanism": "bank", "encoder": "backbone"},
                            "bank retrieving with the backbone's own hidden states instead of MiniLM"),
    # Trained on the H200 with `memlm train --config configs/train/<name>.yaml` (docs/train.md).
    "babilong": Preset({}, "the best BABILong model: importance-babilong", weights="importance-babilong"),
    "importance-babilong": Preset({}, "token-importance memory keeping whole sentences (192 tokens) + LoRA, trained on "
                                      "BABILong qa1-qa5 to 16K tokens with large casts of people and places, "
                                      "free-form facts and number keys", weights="importance-babilong"),
    "importance-babilong-words": Preset({}, "stage 2 of importance-babilong: whole words (160 tokens), BABILong "
                                            "only; the init of the needle recipes",
                                        weights="importance-babilong-words"),
    "importance-babilong-tokens": Preset({}, "stage 1 of importance-babilong: tokens kept one by one, trained on "
                                             "bAbI's own cast (and 40 other names)",
                                         weights="importance-babilong-tokens"),
    "slots-babilong": Preset({}, "LM2 memory slots + LoRA, trained on BABILong qa1-qa5 to 4K tokens",
                             weights="slots-babilong"),
    "recurrent-babilong": Preset({}, "recurrent GRU memory + LoRA, trained on BABILong qa1-qa5 to 4K tokens",
                                 weights="recurrent-babilong"),
    # Trained with `memlm train --config configs/train/chat.yaml` (on 2 CPU cores so far: docs/chat.md;
    # benchmarks/gpu_chat.sh on a GPU): listed while its weights are in the package.
    **({"chat": Preset({}, "the bank's prompt fusion + a LoRA that answers like a person: the fact asked "
                           "about, to the user, in a sentence; \"I don't know\" when no fact says; then stops "
                           "(the default of memlm chat and memlm serve)", weights="chat")} if _shipped("chat") else {}),
}


@dataclass(frozen=True)
class Mechanism:
    name: str
    config_class: type[MemoryConfig]
    module_class: type[Memory]
    description: str


_registered: dict[str, Mechanism] = {}
_presets: dict[str, Preset] = dict(BUILTIN_PRESETS)


def _mechanism_of(module_class: type[Memory]) -> Mechanism:
    config_class = module_class.config_class
    name = config_class.mechanism
    if not name:
        raise ConfigError(f"{config_class.__name__} declares no mechanism name (set `mechanism = \"...\"`)")
    doc = (module_class.__doc__ or "").strip().splitlines()
    return Mechanism(name, config_class, module_class, doc[0] if doc else "")


def register_memory(module_class: type[Memory]) -> Mechanism:
    """Make a mechanism defined outside memlm available to `attach()`, the CLI and the contract tests.

    Example:
        >>> memlm.register_memory(EchoMemory)   # EchoMemory.config_class.mechanism == "echo"
    """
    mechanism = _mechanism_of(module_class)
    existing = _registered.get(mechanism.name)
    if mechanism.name in BUILTIN_MECHANISMS or (existing and existing.module_class is not module_class):
        raise ConfigError(f"a different mechanism is already registered as {mechanism.name!r}")
    _registered[mechanism.name] = mechanism
    return mechanism


def unregister_memory(name: str) -> None:
    """Remove a mechanism registered with `register_memory` (tests register throwaway ones)."""
    _registered.pop(name, None)


def available_mechanisms() -> list[str]:
    return sorted({*BUILTIN_MECHANISMS, *_registered})


def get_mechanism(name: str) -> Mechanism:
    if name not in _registered and name in BUILTIN_MECHANISMS:
        module_path, class_name = BUILTIN_MECHANISMS[name].split(":")
        module_class = getattr(importlib.import_module(module_path), class_name)
        _registered[name] = _mechanism_of(module_class)
        if _registered[name].name != name:
            raise ConfigError(f"{BUILTIN_MECHANISMS[name]} declares mechanism {_registered.pop(name).name!r}, "
                              f"not {name!r}")
    try:
        return _registered[name]
    except KeyError:
        raise UnknownMechanismError(
            f"unknown memory mechanism {name!r}; available: {', '.join(available_mechanisms())}; "
            f"presets: {', '.join(sorted(_presets))}"
        ) from None


def register_preset(name: str, config: dict[str, Any], description: str = "") -> None:
    """Name a ready-made config (e.g. "knn-joint") usable wherever a mechanism name is."""
    if name in BUILTIN_MECHANISMS or name in _registered:
        raise ConfigError(f"{name!r} is a mechanism; a preset needs another name")
    _presets[name] = Preset(dict(config), description)


def available_presets() -> dict[str, str]:
    return {name: preset.description for name, preset in sorted(_presets.items())}


def get_preset(name: str) -> Preset | None:
    return _presets.get(name)


def make_config(spec: MemoryConfig | str | dict[str, Any], **overrides: Any) -> MemoryConfig:
    """Turn a config, a mechanism or preset name, or a dict with a `mechanism` key into a
    validated config."""
    if isinstance(spec, MemoryConfig):
        return spec.replace(**overrides) if overrides else spec
    if isinstance(spec, str):
        if spec in _presets:
            if _presets[spec].weights is not None:
                raise ConfigError(f"preset {spec!r} is trained weights, not a config: attach it with "
                                  f"memlm.attach(model, {spec!r}) or --memory {spec}")
            return make_config({**_presets[spec].config, **overrides})
        return get_mechanism(spec).config_class.from_dict(overrides)
    if isinstance(spec, dict):
        if "mechanism" not in spec:
            raise ConfigError(f"memory config {spec!r} has no 'mechanism' key")
        if not isinstance(spec["mechanism"], str):
            raise ConfigError(f"a memory config's 'mechanism' must be a name, got {spec['mechanism']!r}")
        return get_mechanism(spec["mechanism"]).config_class.from_dict({**spec, **overrides})
    raise ConfigError(f"cannot build a memory config from {type(spec).__name__}")
