"""What several commands share: their common options, the decoding options, typed errors shown as
one line, and building the model they run on.

Heavy modules (torch, transformers, memlm's model code) are imported inside the functions that use
them, so that the command-line modules add nothing to the time `memlm --help` takes.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

BackboneOpt = Annotated[str | None, typer.Option(
    "--backbone", "-b",
    help="GGUF file, Hugging Face model folder or hub id [default: $MEMLM_GGUF, else the embedded "
         "SmolLM2-135M-Instruct]")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 [default: "
                                                      "float32 on CPU, bfloat16 on CUDA]")]
MemoryOpt = Annotated[list[str] | None, typer.Option(
    "--memory", "-m", help="memory mechanism to attach; repeat or comma-separate; 'none' for none")]
MemoryConfigOpt = Annotated[Path | None, typer.Option(
    help="YAML file listing memories and their options (see configs/)")]
AdapterOpt = Annotated[Path | None, typer.Option(
    help="folder written by MemoryModel.save_pretrained: memories with learned weights")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
LimitOpt = Annotated[int, typer.Option(min=1, help="show at most this many")]


def friendly_errors(command: Callable) -> Callable:
    """Show memlm's typed errors as one readable line and exit with status 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from memlm.errors import MemlmError

        try:
            return command(*args, **kwargs)
        except MemlmError as error:
            err_console.print(f"[bold red]error:[/] {type(error).__name__}: {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def comma_list(text: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def memory_names(memory: list[str] | None) -> list[str]:
    """The names given by repeated or comma-separated --memory options, without 'none'."""
    return [name for item in memory or [] for name in comma_list(item) if name != "none"]


def memory_specs(memory: list[str] | None, memory_config: Path | None) -> list[Any]:
    """--memory names followed by the memories of the --memory-config file."""
    from memlm.config import load_configs

    specs: list[Any] = memory_names(memory)
    if memory_config is not None:
        if not memory_config.is_file():
            raise typer.BadParameter(f"{memory_config} does not exist", param_hint="--memory-config")
        specs.extend(load_configs(memory_config))
    return specs


def build_model(backbone: str | None, device: str, dtype: str | None, specs: list[Any],
                adapter: Path | None) -> tuple[Any, Any]:
    """(MemoryModel, tokenizer): the backbone with `specs` attached, after the --adapter's memories."""
    from memlm import MemoryModel, load_backbone

    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    if tokenizer is None:
        raise typer.BadParameter("this backbone has no tokenizer", param_hint="--backbone")
    if adapter is not None:
        memory_model = MemoryModel.from_pretrained(model, adapter, tokenizer=tokenizer)
        for spec in specs:
            memory_model.add_memory(spec)
    else:
        memory_model = MemoryModel(model, specs, tokenizer=tokenizer)
    return memory_model, tokenizer


def read_text(file: Path) -> str:
    """The UTF-8 text of FILE; a bad parameter if it is not text or empty."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{file} is not UTF-8 text", param_hint="FILE") from None
    if not text.strip():
        raise typer.BadParameter(f"{file} is empty", param_hint="FILE")
    return text


def state_line(memory_model: Any) -> str:
    """One line with each memory's numeric summary, e.g. `recurrent: updates=2, state_norm=0.4`."""
    parts = []
    for name, memory in memory_model.memories.items():
        numbers = ", ".join(f"{key}={_short(value)}" for key, value in memory.summary().items()
                            if isinstance(value, (int, float)))
        parts.append(f"{name}: {numbers}")
    return "; ".join(parts) or "no memory attached"


def _short(value: float | int) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- decoding options --------------------------------------------------------------------------
def _option(*param_decls: str, default: Any = None, **kwargs: Any) -> Any:
    """A DecodingOptions field and, in its metadata, the typer option that sets it."""
    return field(default=default, metadata={"option": typer.Option(*param_decls, **kwargs)})


@dataclass(frozen=True)
class DecodingOptions:
    """How `generate` and `chat` decode; each field is one command-line option (see `decoding_options`)."""

    max_new_tokens: int = _option(default=64, min=1, help="tokens to generate at most")
    do_sample: bool = _option("--do-sample/--greedy", default=False, help="sample instead of greedy")
    temperature: float | None = _option(min=0.0, help="sampling temperature")
    top_p: float | None = _option(min=0.0, max=1.0, help="nucleus sampling mass")
    top_k: int | None = _option(min=0, help="sample among the k likeliest tokens")
    repetition_penalty: float | None = _option(min=0.0, help="penalise repeats (>1)")
    no_repeat_ngram_size: int | None = _option(min=0, help="forbid repeating n-grams")
    num_beams: int = _option(default=1, min=1, help="beam search width (1: no beams)")
    seed: int | None = _option(help="random seed for sampling")
    decode: str | None = _option(help="greedy decoding's fast path: static (static KV cache), graph (+ CUDA graphs), "
                                      "compile (+ torch.compile) or auto; default: transformers' loop")

    def to_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `generate()`, leaving out unset options so transformers' defaults apply.
        Seeds torch first when a seed is set: generate() takes no seed, it samples from torch's generator."""
        if self.seed is not None:
            import torch

            torch.manual_seed(self.seed)
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seed"}
        return {key: value for key, value in options.items() if value is not None}

    def streamer(self, tokenizer: Any) -> Any:
        """A streamer printing the reply as it is generated, or None with beam search (transformers cannot
        stream beams)."""
        if self.num_beams > 1:
            return None
        from transformers import TextStreamer

        return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def decoding_options(**defaults: Any) -> Callable[[Callable], Callable]:
    """Give a command the ten decoding options, with per-command `defaults`.

    The command declares one keyword-only parameter `decoding: DecodingOptions`; in the signature typer
    sees, it is replaced, in place (so --help keeps their order), by one typer option per field of
    DecodingOptions. The command is called with those values gathered into one DecodingOptions.
    """
    if unknown := set(defaults) - {f.name for f in fields(DecodingOptions)}:
        raise TypeError(f"not decoding options: {', '.join(sorted(unknown))}")
    defaults = {f.name: defaults.get(f.name, f.default) for f in fields(DecodingOptions)}
    hints = typing.get_type_hints(DecodingOptions)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        if "decoding" not in signature.parameters:
            raise TypeError(f"{command.__name__} needs a keyword-only parameter `decoding: DecodingOptions`")
        options = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults[f.name],
                                     annotation=Annotated[hints[f.name], f.metadata["option"]])
                   for f in fields(DecodingOptions)]
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            parameters.extend(options if parameter.name == "decoding" else [parameter])

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            decoding = DecodingOptions(**{name: kwargs.pop(name, default) for name, default in defaults.items()})
            return command(*args, decoding=decoding, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        # typer also reads the annotations: make them those of the new signature
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
        return wrapper

    return decorate
