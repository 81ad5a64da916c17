"""`MemoryModel`: a Hugging Face causal LM with memories attached through hooks.

The backbone's code and weights are never changed: memories are an `nn.ModuleDict` next to it and
act through removable forward hooks, so `detach()` gives back exactly the model you passed in.

Reads happen on every forward (decode steps with a KV cache included); writes happen once per
segment or turn:

* `forward(...)` writes after the pass, unless it is a cached decode step;
* `generate(...)` reads while decoding, then writes the whole turn (prompt + reply) in one extra
  forward pass, so every decoding option of `transformers` (sampling, beams, streaming, ...) works
  unchanged and the KV cache never mixes two memory states;
* `memorize(...)` streams a long input through the model in segments, writing after each.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from memlm.config import MemoryConfig
from memlm.decode import GreedyDecoder
from memlm.errors import ConfigError
from memlm.hooks import backbone_fingerprint, claim_backbone, inspect_backbone
from memlm.lora import BackboneLora, LoraSettings, carries_lora
from memlm.memories.base import (
    AuxiliaryLoss,
    FileState,
    InputRewriting,
    Memory,
    MemoryContext,
    PromptFusion,
    Provenance,
    SegmentInputs,
    TextLearning,
)
from memlm.model_files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    FORMAT_VERSION,
    LORA_PREFIX,
    STATE_FILE,
    load_adapter_weights,
    next_state_folder,
    read_adapter,
    read_state,
    retire_state_folders,
    save_adapter,
    state_folder,
    state_metadata,
)
from memlm.registry import Pretrained, get_mechanism, get_preset, make_config
from memlm.segments import is_decode_step, ones_mask, position_ids_from_mask, reply_attention_mask
from memlm.serialization import save_tensors

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "FORMAT_VERSION", "LORA_PREFIX", "STATE_FILE", "ConfigSpec",
           "MemoryModel", "attach"]

ConfigSpec = MemoryConfig | str | dict | Pretrained


class MemoryModel(nn.Module):
    """A causal LM plus attached memories.

    Example:
        >>> import memlm
        >>> model, tokenizer = memlm.load_backbone()
        >>> mm = memlm.attach(model, "recurrent", tokenizer=tokenizer)
        >>> ids = tokenizer("The capital of France is", return_tensors="pt")
        >>> reply = mm.generate(**ids, max_new_tokens=8, do_sample=False)
    """

    def __init__(self, backbone: nn.Module, configs: Iterable[ConfigSpec] = (), tokenizer: Any = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.layout = inspect_backbone(backbone)
        self.context = MemoryContext(tokenizer=tokenizer)
        self.memories = nn.ModuleDict()
        self._fingerprint: dict[str, Any] | None = None
        self.lora: BackboneLora | None = None  # a LoRA adapter on the backbone (`add_lora`)
        self._loading_weights = False  # set while from_pretrained/add_pretrained attach what they load
        self.greedy_decoder = GreedyDecoder(self)  # generate(decode=...): static cache, CUDA graphs
        try:
            for config in configs:
                self.add_memory(config)
        except BaseException:
            self.detach()
            raise

    def __getattr__(self, name: str) -> Any:
        # Behave like the backbone for everything the wrapper does not define (config, device...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "backbone":
                raise
            return getattr(self.backbone, name)

    # --- attaching ---------------------------------------------------------------------------
    def add_memory(self, config: ConfigSpec) -> Memory:
        """Attach one more memory (a config, a mechanism or preset name, or a dict with `mechanism`).
        A trained preset's name attaches its memories, its LoRA adapter and their weights."""
        if isinstance(config, Pretrained):
            return self.add_pretrained(config.path, config.settings)
        preset = get_preset(config) if isinstance(config, str) else None
        if preset is not None and preset.path is not None:
            return self.add_pretrained(preset.path)
        if isinstance(config, str) and (Path(config).expanduser() / ADAPTER_CONFIG_FILE).is_file():
            return self.add_pretrained(Path(config).expanduser())  # a folder written by save_pretrained / memlm train
        config = make_config(config)
        name = config.mechanism
        if name in self.memories:
            raise ConfigError(f"a {name!r} memory is already attached")
        claim_backbone(self.backbone, self.context)
        memory = get_mechanism(name).module_class(config, self.layout, self.context)
        memory.to(device=self.layout.device, dtype=self.layout.dtype)
        memory.train(self.backbone.training)  # a new module trains by default; follow the backbone
        try:
            memory.attach(self.layout)
        except BaseException:
            memory.remove_hooks()
            raise
        self.memories[name] = memory
        claim_backbone(self.backbone, self.context, memory)
        if not self._loading_weights and memory.needs_training():
            _warn_untrained(name)
        return memory

    def add_pretrained(self, directory: str | os.PathLike, settings: dict[str, dict[str, Any]] | None = None
                       ) -> Memory:
        """Attach the memories (and LoRA adapter) saved by `save_pretrained` in `directory`, with their
        weights, beside any already attached; returns the last of them. `settings` changes settings of
        its memories before they attach, per mechanism (e.g. {"bank": {"store": "facts.sqlite"}})."""
        directory = Path(directory)
        adapter, tensors = read_adapter(directory, self.fingerprint)
        added: list[str] = []
        try:
            self._loading_weights = True
            for entry in adapter["memories"]:
                added.append(self.add_memory(make_config({**entry, **(settings or {}).get(entry["mechanism"], {})}
                                                         )).mechanism)
            if adapter.get("lora"):
                self.add_lora(LoraSettings.from_dict(adapter["lora"]))
            self._load_weights(tensors, source=directory, only=added)
        except BaseException:
            for name in added:
                self.remove_memory(name)
            if adapter.get("lora"):
                self.remove_lora()
            raise
        finally:
            self._loading_weights = False
        return self.memories[added[-1]]

    def remove_memory(self, name: str) -> None:
        self.memories[name].remove_hooks()
        del self.memories[name]

    def detach(self) -> nn.Module:
        """Remove every memory, hook and adapter; return the backbone exactly as it was."""
        for name in list(self.memories):
            self.remove_memory(name)
        self.remove_lora()
        return self.backbone

    def add_lora(self, settings: LoraSettings | dict[str, Any]) -> BackboneLora:
        """Put a LoRA adapter on the backbone's linear layers, in place (see `memlm.lora`)."""
        if self.lora is not None:
            raise ConfigError("a LoRA adapter is already attached")
        claim_backbone(self.backbone, self.context)
        if carries_lora(self.backbone):
            raise ConfigError("this backbone already carries a LoRA adapter (another MemoryModel's, or peft's)")
        if isinstance(settings, dict):
            settings = LoraSettings.from_dict(settings)
        self.lora = BackboneLora(self.backbone, settings, self.layout.num_layers)
        return self.lora

    def remove_lora(self) -> None:
        if self.lora is not None:
            self.lora.remove()
            self.lora = None

    @contextmanager
    def paused(self) -> Iterator[nn.Module]:
        """Temporarily remove every hook (state kept): inside, the backbone runs bare.

        Example:
            >>> with mm.paused() as bare:
            ...     baseline = bare(input_ids).logits
        """
        for memory in self.memories.values():
            memory.remove_hooks()
        if self.lora is not None:
            self.lora.enable(False)
        try:
            yield self.backbone
        finally:
            if self.lora is not None:
                self.lora.enable(True)
            for memory in self.memories.values():
                memory.attach(self.layout)

    # --- running -----------------------------------------------------------------------------
    def capable(self, capability: type) -> list[Any]:
        """The attached memories that have `capability` (e.g. `PromptFusion`), in attach order."""
        return [memory for memory in self.memories.values() if isinstance(memory, capability)]

    def _rewrite_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None = None) -> SegmentInputs:
        """Let `InputRewriting` memories change a segment's or prompt's inputs (e.g. prepend the
        tokens they kept); positions follow the mask, so rows with shorter prefixes read as left-padded."""
        mask = attention_mask if attention_mask is not None else ones_mask(input_ids)
        positions = position_ids if position_ids is not None else position_ids_from_mask(mask)
        inputs = SegmentInputs(input_ids, mask, positions, 0)
        for memory in self.capable(InputRewriting):
            rewritten = memory.rewrite_inputs(inputs.input_ids, inputs.attention_mask, inputs.position_ids)
            inputs = rewritten._replace(prefix_length=inputs.prefix_length + rewritten.prefix_length)
        return inputs

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                *, write_memory: bool | None = None, **kwargs: Any) -> Any:
        """The backbone's forward with memory. Writes after the pass (one segment), except on
        cached decode steps; pass `write_memory=False` to only read.

        Memories that rewrite inputs (`InputRewriting`) prepend to `input_ids` on every pass that is
        not a decode step; the returned logits cover the caller's tokens only."""
        # transformers 5 renames `past_key_values` to `cache`; either marks a decode step when non-empty.
        decode_step = is_decode_step(kwargs.get("past_key_values", kwargs.get("cache")))
        if write_memory is None:
            write_memory = not decode_step
        prefix_length = 0
        if input_ids is not None and not decode_step and self.capable(InputRewriting):
            inputs = self._rewrite_inputs(input_ids, attention_mask, kwargs.pop("position_ids", None))
            input_ids, attention_mask, kwargs["position_ids"], prefix_length = inputs
            if kwargs.get("labels") is not None and prefix_length:
                labels = kwargs["labels"]
                kwargs["labels"] = torch.cat([labels.new_full((labels.shape[0], prefix_length), -100), labels], 1)
        if not write_memory or not self.memories:
            output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        else:
            reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
            mask = attention_mask if attention_mask is not None else ones_mask(reference)
            with self._writing(mask, input_ids):
                output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                self._write()
        logits = getattr(output, "logits", None)
        if prefix_length and logits is not None and logits.shape[1] == input_ids.shape[1]:  # not logits_to_keep
            output.logits = logits[:, prefix_length:]
        return output

    @contextmanager
    def _writing(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None) -> Iterator[None]:
        self.context.capturing = True
        self.context.attention_mask = attention_mask
        self.context.input_ids = input_ids
        try:
            yield
        finally:
            self.context.capturing = False
            self.context.attention_mask = None
            self.context.input_ids = None
            for memory in self.memories.values():
                memory.clear_captures()

    def _write(self) -> None:
        for memory in self.memories.values():
            memory.write()

    def _write_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_labels: torch.Tensor | None = None) -> None:
        """One forward pass over a segment or turn, only to write memory. When every memory needs the
        backbone only up to some layer (`Memory.capture_depth`), the pass stops after it."""
        input_ids, attention_mask, position_ids, _ = self._rewrite_inputs(input_ids, attention_mask)
        depths = [memory.capture_depth for memory in self.memories.values()]
        stop = None
        if depths and None not in depths and max(depths) < self.layout.num_layers - 1:
            stop = self.layout.layers[max(depths)].register_forward_hook(_stop_forward)
        self.context.token_labels = token_labels
        try:
            with self._writing(attention_mask, input_ids):
                with contextlib.suppress(_ForwardStopped):
                    self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False)
                self._write()
        finally:
            self.context.token_labels = None
            if stop is not None:
                stop.remove()

    def prefix_length(self) -> int:
        """The most positions memories may put in front of a segment (`InputRewriting`): a segment of
        a W-token window holds W minus this many tokens of the caller's."""
        return sum(memory.max_prefix_length for memory in self.capable(InputRewriting))

    def _begin_call(self) -> None:
        for memory in self.memories.values():
            memory.begin_call()

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 *, write_memory: bool = True, context_window: int | None = None, decode: str = "eager",
                 **kwargs: Any) -> Any:
        """`transformers` generate with memory; every decoding option is passed through.

        Args:
            write_memory: after generating, write the turn (prompt + first returned reply of each
                input row) to memory in one forward pass.
            context_window: if the prompt is longer, only its last `context_window` tokens stay in
                the context; the earlier tokens are first streamed into memory in segments of
                `context_window` tokens.
            decode: "eager" (transformers' loop), or fast greedy decoding (`memlm.decode`): "static"
                (static KV cache), "graph" (plus CUDA graphs), "compile" (plus torch.compile), "auto"
                (graph on CUDA, else static); transformers' loop wherever the fast one does not apply.

        Returns what `transformers` returns, for the caller's prompt: tokens an `InputRewriting`
        memory put in front of it are not part of the returned sequences.
        """
        self._begin_call()
        if context_window is not None and input_ids is not None and input_ids.shape[1] > context_window:
            split = input_ids.shape[1] - context_window
            head_mask = None if attention_mask is None else attention_mask[:, :split]
            self._memorize(input_ids[:, :split], head_mask, context_window, progress=False)
            input_ids = input_ids[:, split:]
            attention_mask = None if attention_mask is None else attention_mask[:, split:]
        processors = [processor for memory in self.capable(PromptFusion) for processor in memory.logits_processors()]
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), *processors])
        prompt_ids, prompt_mask, prefix_length = input_ids, attention_mask, 0
        if input_ids is not None and self.capable(InputRewriting):
            prompt_ids, prompt_mask, _, prefix_length = self._rewrite_inputs(input_ids, attention_mask)
        output = None if decode == "eager" else self.greedy_decoder.generate(prompt_ids, prompt_mask, decode, kwargs)
        if output is None:
            output = self.backbone.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
        if prefix_length:
            if isinstance(output, torch.Tensor):
                output = output[:, prefix_length:]
            else:
                output.sequences = output.sequences[:, prefix_length:]
        if write_memory and self.memories and input_ids is not None:
            sequences = output if isinstance(output, torch.Tensor) else output.sequences
            mask = attention_mask if attention_mask is not None else ones_mask(input_ids)
            self._write_turn(input_ids, mask, sequences, kwargs.get("generation_config"))
        return output

    @torch.no_grad()
    def _write_turn(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor, sequences: torch.Tensor,
                    generation_config: Any = None) -> None:
        batch_size, prompt_length = input_ids.shape
        per_row = max(1, sequences.shape[0] // batch_size)
        turn = sequences[::per_row]  # (B, T_prompt + T_new): first returned sequence of each row
        config = generation_config or self.backbone.generation_config
        reply_mask = reply_attention_mask(turn[:, prompt_length:], config.eos_token_id)
        self._write_pass(turn, torch.cat([prompt_mask.to(reply_mask.dtype), reply_mask], dim=1))

    def write(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              token_labels: torch.Tensor | None = None) -> None:
        """Write one segment or turn to memory (one forward pass; nothing is generated).

        `token_labels` (B, T), when the training data has them, say which tokens a later question
        needs; memories that select tokens (`importance`) learn from them."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        mask = attention_mask if attention_mask is not None else ones_mask(input_ids)
        labels = None if token_labels is None else token_labels.to(self.layout.device)
        self._write_pass(input_ids.to(self.layout.device), mask.to(self.layout.device), labels)

    def memorize(self, inputs: torch.Tensor | str, attention_mask: torch.Tensor | None = None,
                 segment_length: int = 512, progress: bool = True) -> int:
        """Stream a long input through the model in segments, writing memory after each.

        `inputs` is a (B, T) tensor of token ids, or a string when a tokenizer was given to
        `attach()`. Returns the number of segments written.
        """
        if isinstance(inputs, str):
            if self.tokenizer is None:
                raise ConfigError("memorize(text) needs a tokenizer: attach(model, ..., tokenizer=tok)")
            inputs = self.tokenizer(inputs, return_tensors="pt").input_ids
        if inputs.dim() == 1:
            inputs = inputs.unsqueeze(0)
        self._begin_call()
        mask = None if attention_mask is None else attention_mask.to(self.layout.device)
        return self._memorize(inputs.to(self.layout.device), mask, segment_length, progress)

    def _memorize(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  segment_length: int, progress: bool) -> int:
        if segment_length < 1:
            raise ConfigError(f"segment_length must be positive, got {segment_length}")
        mask = attention_mask if attention_mask is not None else ones_mask(input_ids)
        starts = range(0, input_ids.shape[1], segment_length)
        for start in tqdm(starts, desc="memorizing", unit="segment", disable=not progress):
            segment = slice(start, start + segment_length)
            self._write_pass(input_ids[:, segment], mask[:, segment])
        return len(starts)

    def augment_messages(self, messages: list[dict[str, str]], query: str | None = None, row: int | None = None
                         ) -> tuple[list[dict[str, str]], list[Any]]:
        """Let prompt-fusing memories (`PromptFusion`, e.g. `bank`) add what they retrieve for `query`
        (default: the last user message) to chat messages; `row`: the batch row whose memory the
        messages are for. Returns the messages and everything retrieved."""
        if query is None:
            query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        used: list[Any] = []
        for memory in self.capable(PromptFusion):
            messages, retrieved = memory.augment_messages(messages, query, row=row)
            used.extend(retrieved)
        return messages, used

    def observe_turn(self, user_text: str, reply: str | None = None, turn_ids: torch.Tensor | None = None,
                     judge: Any = None) -> list[Any]:
        """Memorise one chat turn: memories that learn from text (`TextLearning`) get the text, the
        others get `turn_ids` (the templated turn) through one write pass. Returns what was learned."""
        textual = self.capable(TextLearning)
        learned = [result for memory in textual for result in memory.observe_turn(user_text, reply, judge)]
        if turn_ids is not None and len(textual) < len(self.memories):
            with self.segment_writes(False, textual):  # they already learned this turn from its text
                self.write(turn_ids)
        return learned

    def learn_text(self, text: str) -> list[Any]:
        """Give a statement to the memories that learn from text (`TextLearning.learn_text`, e.g. the
        bank stores it as a fact); returns what they learned. Other memories see text only through writes."""
        return [result for memory in self.capable(TextLearning) for result in memory.learn_text(text)]

    @contextmanager
    def segment_writes(self, enabled: bool, memories: list[Any] | None = None) -> Iterator[None]:
        """Turn storing written segments off (or on) in memories that learn from text, for a while."""
        with contextlib.ExitStack() as stack:
            for memory in self.capable(TextLearning) if memories is None else memories:
                stack.enter_context(memory.segment_writes(enabled))
            yield

    def auxiliary_loss(self, row_losses: torch.Tensor | None = None) -> torch.Tensor | None:
        """The sum of the memories' own training losses since the last call (`AuxiliaryLoss`), or None.
        `row_losses` (B,) is each row's task loss (memories that learn from how their choices did use it)."""
        losses = [loss for memory in self.capable(AuxiliaryLoss)
                  if (loss := memory.auxiliary_loss(row_losses)) is not None]
        return torch.stack([loss.float() for loss in losses]).sum() if losses else None

    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        """Label what the memories store from now on with a user and a session (`Provenance`)."""
        for memory in self.capable(Provenance):
            memory.set_provenance(user=user, session=session)

    def reset(self, batch_size: int | None = None) -> None:
        """Forget all memory state; `batch_size` pre-sizes per-row state."""
        for memory in self.memories.values():
            memory.reset(batch_size)

    def detach_state(self) -> None:
        """Truncate backpropagation through time at the current state (call between optimizer steps)."""
        for memory in self.memories.values():
            memory.detach_state()

    # --- inspection --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.layout)
        return self._fingerprint

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What training updates: the memories' parameters and the LoRA adapter's, if attached."""
        return [*self.memories.parameters(), *(self.lora.parameters() if self.lora is not None else [])]

    def memory_parameters(self) -> Iterator[nn.Parameter]:
        """The learnable parameters of the attached memories (what an optimizer should train)."""
        return self.memories.parameters()

    def describe(self) -> dict[str, Any]:
        """Backbone, attached memories and parameter counts (what `memlm info` prints)."""
        backbone_params = sum(p.numel() for p in self.backbone.parameters())
        return {
            "backbone": {**self.fingerprint, "parameters": backbone_params,
                         "device": str(self.layout.device), "dtype": str(self.layout.dtype).replace("torch.", "")},
            "memories": {
                name: {"config": memory.config.to_dict(),
                       "parameters": sum(p.numel() for p in memory.parameters()),
                       "state": memory.summary()}
                for name, memory in self.memories.items()
            },
        }

    # --- learned weights (adapter) -----------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
        """Save the memories' learned weights and the LoRA adapter's, if any (safetensors; in `dtype`
        if given, e.g. bfloat16 to halve a shipped preset), and their configs (JSON), not the backbone.
        `extra` is recorded in the config (e.g. how the weights were trained)."""
        directory = Path(directory)
        save_adapter(directory, self.memories, self.lora, self.fingerprint, dtype, extra)
        return directory

    @classmethod
    def from_pretrained(cls, backbone: nn.Module, directory: str | os.PathLike,
                        tokenizer: Any = None) -> MemoryModel:
        """Attach memories saved by `save_pretrained` to `backbone`, with their learned weights."""
        model = cls(backbone, [], tokenizer=tokenizer)
        try:
            model.add_pretrained(directory)
        except BaseException:
            model.detach()
            raise
        return model

    def _load_weights(self, tensors: dict[str, torch.Tensor], source: Path, only: list[str] | None = None) -> None:
        """Load saved weights into the attached memories (`only` these, if given) and the LoRA adapter."""
        load_adapter_weights(self.memories, self.lora, tensors, source, only)

    # --- memory state ------------------------------------------------------------------------
    def save_state(self, directory: str | os.PathLike) -> Path:
        """Save what the memories remember (not their weights), atomically, to one file.

        Memories whose state is files (`FileState`: knn's store, bank's snapshot) write them first into
        a new versioned folder (`knn.000007`) that the state file then names; replacing the state file
        is the one commit point of the whole save, so a crash leaves the previous save (state file and
        its folders) or this one, never a new folder paired with an old state file. Afterwards `knn`
        is made a symbolic link to the current folder (for people and tools that look there) and the
        older folders are removed."""
        directory = Path(directory)
        path = directory / STATE_FILE
        folders: dict[str, str] = {}
        for name, memory in self.memories.items():
            if isinstance(memory, FileState):
                directory.mkdir(parents=True, exist_ok=True)
                folders[name] = next_state_folder(directory, name)
                memory.save_state_files(directory / folders[name])
        tensors = {f"{name}.{key}": value for name, memory in self.memories.items()
                   for key, value in memory.state_tensors().items()}
        save_tensors(path, tensors, state_metadata(self.fingerprint, self.memories, folders))
        for name, folder in folders.items():
            retire_state_folders(directory, name, folder)
        return path

    def load_state(self, directory: str | os.PathLike) -> None:
        """Restore state saved by `save_state`. On any error the current state is left untouched."""
        path = Path(directory) / STATE_FILE
        per_memory, folders = read_state(path, self.fingerprint, list(self.memories))
        files = {}
        for name, memory in self.memories.items():  # check all before changing any
            memory.check_state_tensors(per_memory[name])
            if isinstance(memory, FileState):
                files[name] = memory.read_state_files(Path(directory) / state_folder(path, folders, name))
        for name, memory in self.memories.items():
            memory.load_state_tensors(per_memory[name], files.get(name))


def attach(model: nn.Module, configs: ConfigSpec | Iterable[ConfigSpec], tokenizer: Any = None
           ) -> MemoryModel:
    """Attach memories to a causal LM.

    `configs` is a config, a mechanism name, a dict with a `mechanism` key, or a list of these.

    Example:
        >>> mm = memlm.attach(model, memlm.RecurrentConfig(decay=0.9))
        >>> mm = memlm.attach(model, ["recurrent"])
    """
    if isinstance(configs, (MemoryConfig, str, dict)):
        configs = [configs]
    return MemoryModel(model, configs, tokenizer=tokenizer)


_warned: set[str] = set()


def _warn_untrained(mechanism: str) -> None:
    """Say once per mechanism that an untrained memory changes nothing, and where trained ones are."""
    if mechanism in _warned:
        return
    _warned.add(mechanism)
    from memlm.registry import available_presets, get_preset

    trained = [name for name in available_presets() if (preset := get_preset(name)) is not None
               and preset.weights is not None and mechanism in name]
    hint = f"; trained presets: {', '.join(trained)}" if trained else ""
    warnings.warn(f"memlm: the {mechanism!r} memory starts untrained: its gates are closed, so the model's output "
                  f"equals the backbone's until it is trained (memlm train) or loaded with trained weights "
                  f"(MemoryModel.from_pretrained){hint}", UserWarning, stacklevel=4)


class _ForwardStopped(Exception):
    """Raised by a hook to end a write pass once the layers memories need have run."""


def _stop_forward(_module: nn.Module, _args: tuple, _output: Any) -> None:
    raise _ForwardStopped
