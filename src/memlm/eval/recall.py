"""Multi-session recall, run: any contender (the bank, rag, no memory, the whole history, ...).

For each synthetic user (`memlm.data.multisession`), every session's exchanges are shown to
the contender as a chat would show them (`Contender.observe_turn`: memories that learn from text,
like the bank's fact extraction, get the text with no model call; other memories get a write pass),
each session a conversation of its own. The questions come in a new session, so only memory (or,
for `full`, the whole history kept in context) can answer them. Each is asked once, greedily: `recall` = the
answer appears in the reply (word match), `exact` = the reply's first sentence is the answer alone.

Example:
    >>> users = multisession.generate(n_users=2)
    >>> report = evaluate_multisession(model, tokenizer, users, ["none", "bank"])
    >>> report["systems"]["bank"]["recall"]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from memlm.data.multisession import UserHistory
from memlm.eval.contenders import Contender
from memlm.eval.scoring import clean_reply, contains, exact_match, first_sentence

SYSTEMS = ("none", "full", "bank")


def replay_sessions(contender: Contender, user: UserHistory) -> None:
    """The user's memory from scratch: every session's turns observed, then a new session (for questions)."""
    contender.reset(user=user.user)
    for session in user.sessions:
        contender.new_session()
        for message, reply in session:
            contender.observe_turn(message, reply)
    contender.new_session()


def recall_rows(contender: Contender, users: Sequence[UserHistory], progress: Any = None,
                questions: int | None = None) -> list[dict[str, Any]]:
    """Every question's reply and score for one contender; `questions` asks only that many per user,
    spread evenly over the sessions."""
    rows = []
    for user in users:
        replay_sessions(contender, user)
        step = max(1, len(user.questions) // questions) if questions else 1
        for question in user.questions[::step][:questions]:
            reply = contender.ask(question.question) or ""
            retrieved = [getattr(m, "fact", m) for m in getattr(contender, "last_memories", [])]
            retrieved = [getattr(f, "text", str(f)) for f in retrieved]
            others = [q.answer for q in user.questions if q.answer.lower() != question.answer.lower()]
            rows.append({"user": user.user, "attribute": question.attribute, "session": question.session,
                         "question": question.question, "answer": question.answer, "reply": reply,
                         "recalled": contains(reply, question.answer),
                         "exact": exact_match(first_sentence(reply), question.answer),
                         "clean": clean_reply(reply, question.answer, others, retrieved, question.question),
                         "retrieved": retrieved})
            if progress is not None:
                progress.update()
    return rows


def evaluate_multisession(model: Any, tokenizer: Any, users: Sequence[UserHistory],
                          systems: Sequence[str] = SYSTEMS, window: int = 1024, max_new_tokens: int = 32,
                          progress: bool = True) -> dict[str, Any]:
    """Recall per contender, plus every question's reply. `model` is a bare causal LM."""
    results: dict[str, Any] = {}
    total = len(systems) * sum(len(user.questions) for user in users)
    bar = tqdm(total=total, desc="multi-session recall", unit="question", disable=not progress)
    for system in systems:
        contender = Contender(system, model, tokenizer, window, max_new_tokens)
        started = time.perf_counter()
        try:
            rows = recall_rows(contender, users, bar)
        finally:
            contender.close()
        count = max(1, len(rows))
        results[system] = {"recall": sum(r["recalled"] for r in rows) / count,
                           "exact": sum(r["exact"] for r in rows) / count,
                           "clean": sum(r["clean"] for r in rows) / count, "questions": len(rows),
                           "seconds": time.perf_counter() - started, "rows": rows}
    bar.close()
    return {"users": len(users), "sessions": len(users[0].sessions) if users else 0, "window": window,
            "systems": results}
