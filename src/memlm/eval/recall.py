"""Multi-session recall, run: the bank vs. no memory vs. the whole history in context.

For each synthetic user (`memlm.eval.tasks.multisession`), every session's turns are shown to the
system the way a chat would: the `bank` system memorises each user message (rule extraction, no
model call, exactly as `ChatSession` does); `full` keeps every earlier turn in the prompt (its
oldest turns are dropped if the backbone's window is exceeded); `none` sees only the question.
Then each question is asked once, greedily, and scored: `recall` = the answer appears in the reply
(word match), `exact` = the reply's first sentence is the answer alone.

Example:
    >>> users = multisession.generate(n_users=2)
    >>> report = evaluate_multisession(model, tokenizer, users)
    >>> report["systems"]["bank"]["recall"]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from memlm.eval.scoring import contains, exact_match, first_sentence
from memlm.eval.tasks.multisession import UserHistory
from memlm.model import MemoryModel

SYSTEMS = ("none", "full", "bank")


@torch.no_grad()
def chat_reply(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 32,
               max_prompt_tokens: int | None = None) -> str:
    """A greedy reply; with `max_prompt_tokens`, the oldest turns are dropped until the prompt fits."""
    messages = list(messages)
    while True:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        if max_prompt_tokens is None or ids.shape[1] <= max_prompt_tokens or len(messages) <= 1:
            break
        first_turn = 1 if messages[0]["role"] == "system" else 0
        messages = messages[:first_turn] + messages[first_turn + 2:]
    ids = ids.to(next(model.parameters()).device)
    output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()


def evaluate_multisession(model: Any, tokenizer: Any, users: Sequence[UserHistory],
                          systems: Sequence[str] = SYSTEMS, max_new_tokens: int = 32,
                          bank_options: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Recall per system, plus every question's reply. `model` is a bare causal LM."""
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {SYSTEMS}")
    window = int(getattr(model.config, "max_position_embeddings", 2048)) - max_new_tokens
    results: dict[str, Any] = {}
    total = len(systems) * sum(len(user.questions) for user in users)
    bar = tqdm(total=total, desc="multi-session recall", unit="question", disable=not progress)
    for system in systems:
        rows, write_seconds, writes, started = [], 0.0, 0, time.perf_counter()
        memory_model = None
        if system == "bank":
            options = {"mechanism": "bank", "fusion": "prompt", "importance": "constant", **(bank_options or {})}
            memory_model = MemoryModel(model, [options], tokenizer=tokenizer)
        for user in users:
            history: list[dict[str, str]] = []
            bank = None
            if memory_model is not None:
                memory_model.set_provenance(user=user.user)
                memory_model.reset()
                bank = memory_model.memories["bank"]
            for session in user.sessions:
                for message, reply in session:
                    history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
                    if bank is not None:
                        tick = time.perf_counter()
                        bank.remember_turn(message, reply)
                        write_seconds += time.perf_counter() - tick
                        writes += 1
            for question in user.questions:
                messages = [{"role": "user", "content": question.question}]
                used: list[str] = []
                if system == "full":
                    messages = history + messages
                elif bank is not None:
                    messages, retrieved = bank.fuse_messages(messages)
                    used = [r.fact.text for r in retrieved]
                reply = chat_reply(model, tokenizer, messages, max_new_tokens, max_prompt_tokens=window)
                rows.append({"user": user.user, "attribute": question.attribute, "session": question.session,
                             "question": question.question, "answer": question.answer, "reply": reply,
                             "recalled": contains(reply, question.answer),
                             "exact": exact_match(first_sentence(reply), question.answer), "used": used})
                bar.update()
        if memory_model is not None:
            memory_model.detach()
        count = max(1, len(rows))
        results[system] = {
            "recall": sum(r["recalled"] for r in rows) / count,
            "exact": sum(r["exact"] for r in rows) / count,
            "questions": len(rows),
            "seconds": time.perf_counter() - started,
            "write_ms_per_turn": 1000 * write_seconds / writes if writes else None,
            "rows": rows,
        }
    bar.close()
    return {"users": len(users), "sessions": len(users[0].sessions) if users else 0, "systems": results}
