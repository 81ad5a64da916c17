"""`memlm chat`: the terminal chat loop and its in-chat /commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from memlm.cli.options import (
    AdapterOpt,
    BackboneOpt,
    DecodingOptions,
    DeviceOpt,
    DtypeOpt,
    MemoryConfigOpt,
    MemoryOpt,
    build_model,
    console,
    decoding_options,
    friendly_errors,
    memory_specs,
    state_line,
)

CHAT_HELP = """commands:
  /remember TEXT     store TEXT as a fact (needs a bank: --user or --memory bank)
  /forget ID|TEXT    delete a fact by id, or the fact that best matches TEXT
  /memories [QUERY]  list your facts, or the ones that best match QUERY
  /reset             forget this session's memory, transcript and your facts
  /info              memory state;  /help;  /exit (or Ctrl-D)"""



def default_chat_memories(fallback: list[str], backbone: str | None = None) -> list[str]:
    """What `memlm chat` and `memlm serve` attach when no --memory is given: the trained `chat` preset
    (the bank's prompt fusion + a LoRA that answers like a person) when its weights are shipped and the
    backbone is the embedded default model they were trained for (`memlm.backbone.is_embedded_default`), else
    `fallback` (what they attached before the preset existed): another model would refuse the weights."""
    from memlm.backbone import is_embedded_default
    from memlm.registry import get_preset

    return ["chat"] if is_embedded_default(backbone) and get_preset("chat") is not None else list(fallback)


def _bank_specs(specs: list[Any], user: str | None) -> list[Any]:
    """With --user, the chat gets the shared fact bank of that user: a bank among the specs (the chat
    preset's included) reads and writes that user's facts, and one is added if none is there."""
    from memlm.facts.backends import default_store
    from memlm.paths import facts_path
    from memlm.registry import Pretrained, make_config, pretrained_of

    if user is None:
        return specs
    options = {"store": str(default_store(facts_path())), "user": user, "fusion": "prompt"}
    configs: list[Any] = []
    has_bank = False
    for spec in specs:
        pretrained = pretrained_of(spec)
        if pretrained is not None:
            if "bank" in pretrained.mechanisms:
                has_bank = True
                settings = {**pretrained.settings, "bank": {**pretrained.settings.get("bank", {}), **options}}
                pretrained = Pretrained(pretrained.path, settings)
            configs.append(pretrained)
            continue
        config = make_config(spec)
        if config.mechanism == "bank":
            config, has_bank = config.replace(**options), True
        configs.append(config)
    if not has_bank:
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


@friendly_errors
@decoding_options(max_new_tokens=128, repetition_penalty=1.1)
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
    *,
    decoding: DecodingOptions,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Chat in the terminal. The memory (default: the trained `chat` preset, which reads the user's fact
    bank with --user) persists across turns, and across restarts with --session or --user. Reads lines from stdin,
    so it can be scripted with a pipe."""
    from memlm.chat import ChatSession
    from memlm.facts.extraction import model_judge

    specs = (memory_specs(memory, memory_config) if (memory or memory_config or adapter)
             else default_chat_memories(["recurrent"], backbone))
    memory_model, tokenizer = build_model(backbone, device, dtype, _bank_specs(specs, user), adapter)
    session_chat = ChatSession(memory_model, tokenizer, session=session, user=user, context_turns=context_turns,
                               system_prompt=system, generation=decoding.to_generate_kwargs(),
                               judge=model_judge(memory_model.backbone, tokenizer) if judge else None)
    where = f" in {session_chat.directory}" if session_chat.directory else " (not saved: no --session/--user)"
    if session_chat.resumed:
        console.print(f"[dim]resumed session {session_chat.session!r}: {session_chat.turns} earlier turn(s); "
                      f"{state_line(memory_model)}[/]", highlight=False)
    console.print(f"[dim]memories: {', '.join(memory_model.memories) or 'none'}{where}. "
                  f"Type /help for commands.[/]", highlight=False)
    streamer = decoding.streamer(tokenizer)
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
            console.print(f"[dim]{state_line(memory_model)}[/]", highlight=False)
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
            console.print(f"[dim]  {state_line(memory_model)}[/]", highlight=False)
