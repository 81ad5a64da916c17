"""`memlm demo`: the tour that `make demo` runs on the default model. It exits with status 1 if the
saved session does not reload identically or the fact bank does not recall across sessions."""

from __future__ import annotations

import time
from typing import Any

import typer

from memlm.cli.options import BackboneOpt, DeviceOpt, DtypeOpt, console, friendly_errors, state_line


@friendly_errors
def demo(
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """The tour: load the default model, answer with and without memory, chat with a session
    that is saved, reloaded in a fresh model and found identical; then a fact bank that recalls
    what a user said in an earlier session after a restart, and the classic six-fact scenario; last,
    facts hidden in 16K tokens of a book, which the bare model misses and the `babilong` preset finds."""
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
        console.print(f"[dim]     {state_line(memory_model)}[/]", highlight=False)
    saved_state = memory_model.memories["recurrent"].state.clone()
    fresh = MemoryModel(memory_model.detach(), ["recurrent"], tokenizer=tokenizer)
    resumed = ChatSession(fresh, tokenizer, session=name)
    same = torch.equal(fresh.memories["recurrent"].state, saved_state)
    console.print(f"reloaded session {name!r} from {resumed.directory} into a fresh model: "
                  f"{resumed.turns} turns, state identical: {same}")
    console.print(f"state norm over the session: "
                  f"{[round(v, 3) for v in fresh.memories['recurrent'].state_norm_history]}")
    recalled = _demo_bank(fresh.detach(), tokenizer)
    _demo_long_context(model, tokenizer)  # shown, not gated: one sample is a picture, not a measurement
    console.rule(f"done in {time.perf_counter() - started:.1f} s")
    if not (same and recalled):
        raise typer.Exit(1)


def _demo_long_context(model: Any, tokenizer: Any, length: int = 16384) -> bool:
    """Section 7: facts about people and places the training never drew, hidden in 16K tokens of Paul
    Graham's essays; the bare model reads the last 1,024 tokens, the `babilong` preset reads all of it
    through its memory, 1,024 tokens at a time."""
    from memlm.data import babilong
    from memlm.data.cast import Recast
    from memlm.eval.contenders import Contender
    from memlm.eval.scoring import babilong_correct

    console.rule(f"7. a fact hidden in {length // 1024}K tokens of a book, about people training never saw")
    count = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    [sample] = babilong.generate("qa1", 1, length, seed=11, count_tokens=count, transform=Recast("unseen"))
    console.print(f"the facts, scattered through {count(sample.context):,} tokens: {' '.join(sample.facts)}",
                  highlight=False)
    console.print(f"question: {sample.question} (answer: {sample.answer})", highlight=False)
    correct = {}
    for name in ("none", "babilong"):
        started = time.perf_counter()
        contender = Contender(name, model, tokenizer)
        [reply] = contender.answer_batch([sample.context], [[babilong.question_prompt(sample)]], [sample.question])
        contender.close()
        correct[name] = babilong_correct(reply[0], sample.answer, sample.answer_labels, sample.question)
        label = "bare model (last 1,024 tokens)" if name == "none" else "babilong preset (memory)"
        console.print(f"{label:32} -> {reply[0].strip()!r}  {'correct' if correct[name] else 'wrong'} "
                      f"({time.perf_counter() - started:.0f} s)", highlight=False)
    return correct["babilong"]


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
