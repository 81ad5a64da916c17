"""What `memlm train` reads: one YAML file with a `model`, a `data` and a `train` section.

```yaml
model:                      # what is trained: memories (or LM2-style settings) and an optional LoRA
  memories: [{mechanism: importance, max_memory_size: 160}]
  lora: {r: 8, alpha: 16, layers: above_memory}
data:                       # where examples come from
  tasks: [qa1, qa2, qa3, qa4, qa5, followup]
  curriculum: [{step: 0, lengths: [0, 1024]}, {step: 200, lengths: [0, 4096, 16384]}]
train:                      # how
  steps: 600
  batch_size: 16
output: runs/babilong
```

Every field is documented on its dataclass below; unknown keys and out-of-range values raise
`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memlm.config import MemoryConfig, lm2_configs
from memlm.errors import ConfigError, MemlmError

BABILONG_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5", "followup")
# free-form facts and number keys (memlm.data.needle_train): each trainer task and the generator's task
NEEDLE_TASKS = {"needle": "facts", "passkey": "passkey"}
CHAT_TASK = "chat"  # chat turns over fused facts (memlm.data.chat_turns): the `chat` preset
TASKS = (*BABILONG_TASKS, *NEEDLE_TASKS, CHAT_TASK)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ModelSection:
    """What is trained.

    Args:
        backbone: GGUF file, model folder or hub id (None: the embedded default model).
        memories: memory specs (mechanism names, presets or dicts with `mechanism`), or LM2-style
            settings (`use_internal_memory`, `memory_slots`, ... as in configs/lm2.yaml).
        lora: a LoRA adapter on the backbone (None: none): r, alpha, dropout, target_modules, and
            layers: "all", a list, or "above_memory" (only layers after the deepest layer the
            memories read: a memory that scores hidden states at layer L then sees the untouched
            backbone, and its write passes can stop at L).
        init: a folder written by `save_pretrained` (or a `memlm train` run), or a shipped preset's
            name (e.g. importance-babilong), to start from: its memories, LoRA and weights.
        init_settings: per mechanism, settings of `init`'s memories to change before training
            (e.g. {importance: {keep_unit: word}}); a change that alters the weights' shapes is refused
            when the weights load.
    """

    backbone: str | None = None
    memories: list[Any] | dict[str, Any] = field(default_factory=lambda: ["importance"])
    lora: dict[str, Any] | None = None
    init: str | None = None
    init_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def memory_specs(self) -> list[Any]:
        if isinstance(self.memories, dict):
            return lm2_configs(self.memories)
        if not isinstance(self.memories, list) or not self.memories:
            raise ConfigError("model.memories must be a non-empty list of memory specs or LM2-style settings")
        return list(self.memories)


@dataclass
class DataSection:
    """Where examples come from.

    Args:
        tasks: BABILong-style tasks (qa1..qa5, followup for the three-turn conversations), generated
            from the training split: seeds the evaluation never uses, and a haystack of its own; `needle`
            (3-5 free-form facts about the training cast, one asked) and `passkey` (a number key of 4-7
            digits), from `memlm.data.needle_train`, whose kinds, sentences, questions and key phrasings
            are none of the evaluation's `needle` family's; `chat` (the `chat` preset's turns).
        haystack: corpora (`memlm corpus list`; "gutenberg-train" is every Gutenberg text the
            evaluation does not use; "cast-distractors" is sentences about the training cast's people
            and places that state no event) or text files the facts are hidden in. Never the
            evaluation's "pg-essays".
        curriculum: from `step` on, each batch's context length is drawn from `lengths` (tokens).
        vary: rewrite training stories with the training cast's people, places and objects (bAbI's own
            in a quarter of them) and other verbs (`memlm.data.cast`), so the model learns the task
            rather than bAbI's vocabulary; the evaluation's unseen cast never meets it.
        lm_corpus: plain text for a language-modelling term (keeps general ability); [] for none.
        lm_every: every n-th step is a language-modelling step (0: never).
        chat: options of the `chat` task (`memlm.data.chat_turns.ChatTurnGenerator`): `mix` (weight of
            each kind of turn: answer, unknown, tell, chitchat, other), `max_facts` (facts listed per
            prompt), `max_stream` (at most this many other facts in the message of an `other` turn).
        files: your own data instead of (or beside) the tasks: text files (trained as a document read
            through memory, the next-token loss on its last window) and JSONL chat transcripts
            (`{"role": ..., "content": ...}` per line; the loss on the last assistant reply).
    """

    tasks: list[str] = field(default_factory=lambda: ["qa1"])
    haystack: list[str] = field(default_factory=lambda: ["gutenberg-train"])
    curriculum: list[dict[str, Any]] = field(default_factory=lambda: [{"step": 0, "lengths": [0, 1024]}])
    vary: bool = True
    lm_corpus: list[str] = field(default_factory=lambda: ["gutenberg-train"])
    lm_every: int = 4
    files: list[str] = field(default_factory=list)
    chat: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSection:
    """How training runs.

    Args:
        steps: optimizer steps.
        batch_size: examples per step (per process), one per batch row; all of one length.
        grad_accum: batches whose gradients are summed before each step.
        lr: learning rate of the LoRA adapter (0: the LoRA stays as `init` left it, only the memories
            learn); memory_lr: of the memories.
        warmup: linear warm-up steps, then cosine decay to 10%.
        window: tokens the model reads at a time, memory prefixes included (as in evaluation).
        bptt: cut backpropagation through memory every this many segments (0: never).
        max_new_tokens: the answer budget the window leaves room for, as in evaluation.
        precision: "auto" (bf16 on a GPU, fp32 on CPU), "fp32" or "bf16".
        seed: seeds data and initialisation; the same seed and step give the same batch.
        eval_every / eval_samples / eval_lengths: held-out accuracy every n steps (0: never), on
            this many samples per task and length (training split, other seeds).
        save_every: checkpoint every n steps (0: only at the end); log_every: log every n steps.
        grad_clip: clip the gradient norm to this (0: never).
        max_minutes: stop after this much wall time (checkpoint and final weights written as at the
            end), whatever `steps` says; 0: no limit.
    """

    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    memory_lr: float = 1e-3
    warmup: int = 20
    window: int = 1024
    bptt: int = 4
    max_new_tokens: int = 16
    precision: str = "auto"
    seed: int = 1234
    eval_every: int = 100
    eval_samples: int = 16
    eval_lengths: list[int] = field(default_factory=lambda: [0, 4096])
    save_every: int = 100
    log_every: int = 10
    grad_clip: float = 1.0
    max_minutes: float = 0.0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: str = "runs/memlm"

    def __post_init__(self) -> None:
        try:
            self.validate()
        except MemlmError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError) as error:
            # a value of the wrong kind where validate() expected a list, a mapping, a number (e.g. `curriculum: ~`)
            raise ConfigError(f"the training config holds a value of the wrong type ({type(error).__name__}: "
                              f"{error})") from None

    def validate(self) -> None:
        self.model.memory_specs()
        data, train = self.data, self.train
        unknown = sorted(set(data.tasks) - set(TASKS), key=str)
        if unknown:
            raise ConfigError(f"data.tasks: unknown {unknown}; choose from {list(TASKS)}")
        if not isinstance(data.chat, dict) or set(data.chat) - {"mix", "max_facts", "max_stream"}:
            raise ConfigError(f"data.chat takes mix, max_facts and max_stream, got {data.chat!r}")
        if "pg-essays" in data.haystack or "pg-essays" in data.lm_corpus:
            raise ConfigError("data: pg-essays is the evaluation's haystack; train on other text")
        steps = [stage.get("step") if isinstance(stage, dict) else None for stage in data.curriculum]
        if not data.curriculum or any(not isinstance(s, int) or s < 0 for s in steps) or steps != sorted(steps) \
                or steps[0] != 0:
            raise ConfigError("data.curriculum must be a list of {step, lengths} starting at step 0, in step order")
        for stage in data.curriculum:
            lengths = stage.get("lengths")
            if not lengths or not all(isinstance(n, int) and n >= 0 for n in lengths):
                raise ConfigError(f"data.curriculum: lengths must be non-negative token counts, got {lengths!r}")
        for name in ("steps", "batch_size", "grad_accum", "window", "max_new_tokens"):
            value = getattr(train, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "bptt", "eval_every", "eval_samples", "save_every", "log_every", "seed"):
            value = getattr(train, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"train.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(data.lm_every, int) or data.lm_every < 0:
            raise ConfigError(f"data.lm_every must be a non-negative integer, got {data.lm_every!r}")
        if not isinstance(train.max_minutes, (int, float)) or train.max_minutes < 0:
            raise ConfigError(f"train.max_minutes must be a non-negative number, got {train.max_minutes!r}")
        for name in ("lr", "memory_lr", "grad_clip"):
            value = getattr(train, name)
            # lr 0 freezes the LoRA (only the memories learn); the memories always learn
            if not isinstance(value, (int, float)) or value < 0 or (name == "memory_lr" and value == 0):
                raise ConfigError(f"train.{name} must be a {'positive' if name == 'memory_lr' else 'non-negative'} "
                                  f"number, got {value!r}")
        if train.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {train.precision!r}")
        if train.window < 16 + train.max_new_tokens:
            raise ConfigError(f"train.window {train.window} leaves no room for a question and its answer")
        for path in data.files:
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"data.files: {path} is not a file")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["model"]["memories"] = [m.to_dict() if isinstance(m, MemoryConfig) else m
                                       for m in values["model"]["memories"]] if isinstance(
            values["model"]["memories"], list) else values["model"]["memories"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"a training config is a mapping with model/data/train sections, "
                              f"got {type(values).__name__}")
        sections = {"model": ModelSection, "data": DataSection, "train": TrainSection}
        unknown = sorted(set(values) - {*sections, "output"}, key=str)
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; a training config has {sorted(sections)} and output")
        built: dict[str, Any] = {}
        for name, section in sections.items():
            given = values.get(name) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"section {name} must be a mapping, got {type(given).__name__}")
            known = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(given) - known, key=str)
            if bad:
                raise ConfigError(f"{name}: unknown option(s) {bad}; known: {sorted(known)}")
            try:
                built[name] = section(**given)
            except TypeError as error:
                raise ConfigError(f"{name}: {error}") from None
        return cls(**built, output=str(values.get("output", "runs/memlm")))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        return cls.from_dict(values)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with `section.field` overrides, e.g. replace(**{"train.steps": 10})."""
        values = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section == "output" and not name:
                values["output"] = value
                continue
            if section not in values or not name:
                raise ConfigError(f"override {key!r} must name section.field")
            values[section][name] = value
        return TrainConfig.from_dict(values)
