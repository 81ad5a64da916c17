"""Find the parts of a causal LM that memories hook into, without knowing its class.

Every supported architecture (GPT-2, Llama/SmolLM, Qwen2, Gemma3, and most others in
transformers) is an embedding, a stack of decoder layers in an `nn.ModuleList`, a final norm and an
LM head. `inspect_backbone()` finds them by structure, not by class name, so a new architecture
usually works without code here. Decoder layers return a tensor in recent transformers and a tuple
in older ones; the hook helpers below accept both and give memories a plain tensor.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from memlm.errors import ConfigError, IncompatibleMemoryError

HiddenFn = Callable[[torch.Tensor], torch.Tensor]

# Attribute names used for the final norm across transformers' decoder-only models.
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


@dataclass
class BackboneLayout:
    """The pieces of a backbone that memories attach to."""

    model: nn.Module
    base_model: nn.Module
    embeddings: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    hidden_size: int
    num_layers: int
    vocab_size: int
    model_type: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def resolve_layer(self, index: int) -> int:
        """Accept Python-style negative indices; raise a clear error when out of range."""
        resolved = index + self.num_layers if index < 0 else index
        if not 0 <= resolved < self.num_layers:
            raise IncompatibleMemoryError(
                f"layer {index} does not exist: the backbone has {self.num_layers} layers"
            )
        return resolved


def claim_backbone(backbone: nn.Module, context: Any, memory: nn.Module | None = None) -> None:
    """Refuse to attach to a backbone whose hooks belong to another `MemoryModel` (told apart by their
    `context`): every hook on a backbone runs on every forward pass, so two models' memories would both
    act, each with its own state, and neither model would compute what it claims. Then note `memory`
    (just attached) on the backbone, weakly: a dropped model's memories stay hooked until detached."""
    attached = backbone.__dict__.setdefault("_memlm_memories", weakref.WeakSet())
    if any(other.context is not context and other.has_hooks() for other in attached):
        raise ConfigError("this backbone already carries another MemoryModel's memories: call .detach() on that "
                          "model first, or add these memories to it (add_memory); a model dropped without "
                          "detach() leaves its hooks on the backbone: load the backbone again")
    if memory is not None:
        attached.add(memory)


def inspect_backbone(model: nn.Module) -> BackboneLayout:
    """Locate embeddings, decoder layers and final norm of a Hugging Face causal LM."""
    config = getattr(model, "config", None)
    if config is None:
        raise IncompatibleMemoryError("the model has no `config`: pass a transformers model")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = getattr(text_config, "num_hidden_layers", None) or text_config.n_layer
    hidden_size = getattr(text_config, "hidden_size", None) or text_config.n_embd
    base_model = getattr(model, "base_model", model)

    layers = _find_decoder_layers(base_model, num_layers)
    final_norm = None
    for name in _FINAL_NORM_NAMES:
        candidate = getattr(base_model, name, None)
        if isinstance(candidate, nn.Module):
            final_norm = candidate
            break
    return BackboneLayout(
        model=model,
        base_model=base_model,
        embeddings=model.get_input_embeddings(),
        layers=layers,
        final_norm=final_norm,
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        vocab_size=int(text_config.vocab_size),
        model_type=str(getattr(text_config, "model_type", "unknown")),
    )


def _find_decoder_layers(base_model: nn.Module, num_layers: int) -> nn.ModuleList:
    # The decoder stack is the ModuleList with one entry per hidden layer, all of the same class.
    candidates = [
        module
        for module in base_model.modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == num_layers
        and len({type(layer) for layer in module}) == 1
    ]
    if not candidates:
        raise IncompatibleMemoryError(
            f"could not find the {num_layers} decoder layers of {type(base_model).__name__}"
        )
    return candidates[0]


def _replace_hidden(output: Any, fn: HiddenFn) -> Any:
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    if hasattr(output, "last_hidden_state"):  # a ModelOutput from a wrapped sub-model
        output.last_hidden_state = fn(output.last_hidden_state)
        return output
    raise TypeError(f"unexpected layer output type {type(output).__name__}")


def add_output_hook(module: nn.Module, fn: HiddenFn) -> RemovableHandle:
    """Run `fn` on the hidden states a module returns (tensor or tuple) and return its result."""

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        return _replace_hidden(output, fn)

    return module.register_forward_hook(hook)


def add_input_hook(module: nn.Module, fn: HiddenFn) -> RemovableHandle:
    """Run `fn` on the `hidden_states` a module receives, passed positionally or by keyword."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = fn(kwargs["hidden_states"])
        return args, kwargs

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def add_capture_hook(module: nn.Module, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """Call `fn` with the hidden states a module returns, leaving them unchanged."""

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        fn(output if isinstance(output, torch.Tensor) else _first_tensor(output))

    return module.register_forward_hook(hook)


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    return output.last_hidden_state


def backbone_fingerprint(layout: BackboneLayout) -> dict[str, Any]:
    """What a saved memory records about its backbone, to refuse loading into another one.

    `weights_sha` hashes a sample of embedding rows rounded to bfloat16, so the same model loaded in
    float32 or bfloat16 gets the same fingerprint while a different model does not.
    """
    weight = layout.embeddings.weight.detach()
    step = max(1, weight.shape[0] // 256)
    sample = weight[::step].to(device="cpu", dtype=torch.bfloat16).contiguous()
    weights_sha = hashlib.sha256(sample.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return {
        "name": str(getattr(layout.model.config, "name_or_path", "") or ""),
        "model_type": layout.model_type,
        "hidden_size": layout.hidden_size,
        "num_layers": layout.num_layers,
        "vocab_size": layout.vocab_size,
        "weights_sha": weights_sha,
    }


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], *, what: str,
                      require_same_weights: bool) -> None:
    """Raise `IncompatibleMemoryError` when `saved` cannot be used with the current backbone."""
    for key in ("hidden_size", "num_layers", "vocab_size"):
        if saved.get(key) != current.get(key):
            raise IncompatibleMemoryError(
                f"{what} was saved for a backbone with {key}={saved.get(key)} "
                f"({saved.get('name') or saved.get('model_type')}), but this backbone has "
                f"{key}={current.get(key)} ({current.get('name') or current.get('model_type')})"
            )
    if require_same_weights and saved.get("weights_sha") != current.get("weights_sha"):
        raise IncompatibleMemoryError(
            f"{what} was saved for another model ({saved.get('name') or saved.get('model_type')}, "
            f"weights {saved.get('weights_sha')}); this backbone is "
            f"{current.get('name') or current.get('model_type')} (weights {current.get('weights_sha')})"
        )


# --- attention routing -------------------------------------------------------------------------
# transformers picks each attention module's kernel through `config._attn_implementation` and the
# global `AttentionInterface`. memlm registers one routing function per original implementation
# ("memlm|sdpa", ...): modules that carry `_memlm_attention` handlers run them in the order they were
# added, each handed the next one (the last: the original kernel) to call or not; every other module
# runs the original kernel untouched. `add_attention_handler` adds one and returns its handle.

ROUTED_ATTRIBUTE = "_memlm_attention"
_ROUTER_PREFIX = "memlm|"


def find_attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention module of a decoder layer (the first child whose class says Attention)."""
    for module in layer.modules():
        if module is not layer and "attention" in type(module).__name__.lower() and hasattr(module, "layer_idx"):
            return module
    raise IncompatibleMemoryError(f"no attention module with a layer_idx found in {type(layer).__name__}")


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, KVH, S, D) -> (B, KVH * groups, S, D): grouped-query attention's key/value sharing."""
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention (what transformers' eager kernels compute), for models running "eager"."""
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = (query @ key.transpose(-1, -2)) * scaling  # (B, H, T, S)
    if kwargs.get("softcap"):
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    scores = scores + additive_mask(attention_mask, query.shape[2], key.shape[2], scores.dtype, scores.device,
                                    kwargs.get("sliding_window"))
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights  # (B, T, H, D)


def additive_mask(attention_mask: torch.Tensor | None, query_length: int, key_length: int, dtype: torch.dtype,
                  device: torch.device, sliding_window: int | None = None) -> torch.Tensor:
    """The (B or 1, 1, T, S) additive mask for local attention.

    transformers hands attention kernels a boolean mask (True = attend), a float additive mask, or
    None when plain causal masking applies (queries are the last T of S positions)."""
    if attention_mask is not None:
        attention_mask = attention_mask[..., :key_length]
        if attention_mask.dtype == torch.bool:
            blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
            return torch.where(attention_mask, torch.zeros((), dtype=dtype, device=device), blocked)
        return attention_mask.to(dtype)
    query_positions = torch.arange(key_length - query_length, key_length, device=device).unsqueeze(-1)
    key_positions = torch.arange(key_length, device=device)
    allowed = key_positions <= query_positions  # (T, S)
    if sliding_window:
        allowed &= key_positions > query_positions - sliding_window
    mask = torch.zeros(query_length, key_length, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).view(1, 1, query_length, key_length)


def install_attention_router(model: nn.Module) -> str:
    """Route the model's attention through memlm; returns the original implementation's name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    config = model.config
    current = config._attn_implementation or "eager"
    if current.startswith(_ROUTER_PREFIX):
        return current[len(_ROUTER_PREFIX):]
    routed = _ROUTER_PREFIX + current
    if routed not in AttentionInterface._global_mapping:
        original = AttentionInterface._global_mapping.get(current, eager_attention)

        def route(module: nn.Module, query, key, value, attention_mask, *args: Any, **kwargs: Any):
            handlers = getattr(module, ROUTED_ATTRIBUTE, None)
            if not handlers:
                return original(module, query, key, value, attention_mask, *args, **kwargs)

            def call(index: int, *call_args: Any, **call_kwargs: Any) -> Any:
                if index == len(handlers):
                    return original(*call_args, **call_kwargs)
                module_, query_, key_, value_, mask_, *rest = call_args
                return handlers[index](module_, query_, key_, value_, mask_, partial(call, index + 1), *rest,
                                       **call_kwargs)

            return call(0, module, query, key, value, attention_mask, *args, **kwargs)

        AttentionInterface.register(routed, route)
        mask_function = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(current)
        if mask_function is not None:
            AttentionMaskInterface.register(routed, mask_function)
    config._attn_implementation = routed
    return current


def remove_attention_router(model: nn.Module, original: str) -> None:
    model.config._attn_implementation = original


class AttentionHandlerHandle:
    """Removes one attention handler; the last one removed from a model restores its original kernel."""

    def __init__(self, model: nn.Module, module: nn.Module, handler: Callable, original: str):
        self.model, self.module, self.handler, self.original = model, module, handler, original

    def remove(self) -> None:
        handlers = self.module.__dict__.get(ROUTED_ATTRIBUTE, [])
        if self.handler in handlers:
            handlers.remove(self.handler)
        if not handlers:
            self.module.__dict__.pop(ROUTED_ATTRIBUTE, None)
        if not any(ROUTED_ATTRIBUTE in module.__dict__ for module in self.model.modules()):
            remove_attention_router(self.model, self.original)


def add_attention_handler(model: nn.Module, module: nn.Module, handler: Callable) -> AttentionHandlerHandle:
    """Run `handler(module, query, key, value, attention_mask, next, *args, **kwargs)` in place of the
    attention kernel of `module` (an attention module of `model`); `next(module, query, key, value,
    attention_mask, *args, **kwargs)` runs the handlers added after it, then the original kernel."""
    original = install_attention_router(model)
    module.__dict__.setdefault(ROUTED_ATTRIBUTE, []).append(handler)
    return AttentionHandlerHandle(model, module, handler, original)
