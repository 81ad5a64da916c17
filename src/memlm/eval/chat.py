"""How good a chat reply is, beyond recall: the checks the `chat` preset is trained for and measured by.

* `clean_chat_reply`: a reply a user would be glad to get: it holds the answer, speaks to the user
  (not "the user ...", not the user's facts claimed as the model's own: `memlm.eval.scoring.clean_reply`),
  has at most `MAX_WORDS` words and repeats no sentence. Nothing is cut from a reply before it is
  judged: a reply that loops is a failed reply.
* `says_unknown`: the reply says it does not know ("I don't know", "you haven't told me").
* `UNTOLD_QUESTIONS`: questions about things the evaluation's users never tell (none of the
  multi-session attributes), asked after the told ones: the answer should be "I don't know".
* `evaluate_chat`: multi-session recall with the never-told questions, per contender and seed, with
  ROUGE and BERTScore of the replies against reference replies (`reference_reply`).

Example:
    >>> clean_chat_reply("Your dog is called Biscuit.", "Biscuit")
    True
    >>> clean_chat_reply("You drive a Volvo. You drive a Volvo.", "Volvo")
    False
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from typing import Any

from memlm.data.chat_turns import IDK_PATTERN
from memlm.eval.scoring import clean_reply, contains

MAX_WORDS = 40

# Never-told questions: none of them is about an attribute of `memlm.data.multisession.ATTRIBUTES`,
# and none is a question of the training turns (tested). A few ask about relations training never
# uses at all (a grandfather, a teacher, a first car).
UNTOLD_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is my brother's name?", "your brother's name"),
    ("What's my mother called?", "your mother's name"),
    ("What is my favourite film?", "your favourite film"),
    ("Which band do I like best?", "your favourite band"),
    ("What is my wife's name?", "your wife's name"),
    ("Where did I go on holiday last year?", "where you went on holiday"),
    ("What is my grandfather's name?", "your grandfather's name"),
    ("What was the name of my first teacher?", "your first teacher's name"),
    ("What was my first car?", "your first car"),
    ("What is my favourite dessert?", "your favourite dessert"),
    ("Which road is my house on?", "which road your house is on"),
    ("What did I study at university?", "what you studied"),
    ("How old am I?", "your age"),
    ("What's my shoe size?", "your shoe size"),
    ("What is my son's name?", "your son's name"),
    ("Which country was I born in?", "where you were born"),
    ("What is my favourite TV show?", "your favourite TV show"),
    ("What's the name of my best friend?", "your best friend's name"),
    ("What is my blood type?", "your blood type"),
    ("What's my horse called?", "your horse's name"),
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> int:
    return len(text.split())


def repeats_sentence(text: str) -> bool:
    """Whether any sentence of `text` (case and punctuation aside) occurs twice."""
    seen = set()
    for sentence in _SENTENCE.split(text.strip()):
        key = re.sub(r"[^a-z0-9 ]+", "", sentence.lower()).strip()
        if not key:
            continue
        if key in seen:
            return True
        seen.add(key)
    return False


def says_unknown(text: str) -> bool:
    return bool(IDK_PATTERN.search(text))


def well_formed(text: str) -> bool:
    """Short (≤ `MAX_WORDS` words) and no sentence said twice."""
    return 0 < words(text) <= MAX_WORDS and not repeats_sentence(text)


def clean_chat_reply(text: str, answer: str, others: Sequence[str] = (), retrieved: Sequence[str] = (),
                     question: str = "") -> bool:
    """The answer, to the user, reciting nothing else (`clean_reply`), short, no sentence repeated,
    and not hedged with "I don't know"."""
    return (clean_reply(text, answer, others, retrieved, question) and well_formed(text)
            and not says_unknown(text))


def turn_ok(kind: str, reply: str, answer: str = "") -> bool:
    """A training-time check of one held-out `memlm.data.chat_turns.ChatTurn` reply."""
    if not well_formed(reply):
        return False
    if kind == "unknown":
        return says_unknown(reply)
    if kind in ("answer", "other"):
        return contains(reply, answer) and not says_unknown(reply)
    return not says_unknown(reply)


def reference_reply(question: Any) -> str:
    """What a person would answer a multi-session question: the fact, to the user, in the user's words
    ("By the way, my dog is called Biscuit." -> "Your dog is called Biscuit.")."""
    from memlm.facts.extraction import extract_facts, second_person

    found = extract_facts(question.statement)
    return second_person(found[0].text, found[0].sentence) if found else question.answer


def evaluate_chat(contender: Any, users: Sequence[Any], questions: int | None = None,
                  untold: int = 4, progress: Any = None) -> dict[str, Any]:
    """Multi-session recall (`memlm.eval.recall.recall_rows`) and, per user, `untold` never-told
    questions; every reply scored for recall, cleanliness and "I don't know"."""
    from memlm.eval.recall import recall_rows, replay_sessions

    started = time.perf_counter()
    rows = recall_rows(contender, users, progress, questions)
    told = {user.user: user for user in users}
    for row in rows:
        question = next(q for q in told[row["user"]].questions if q.question == row["question"])
        row["reference"] = reference_reply(question)
        row["clean_chat"] = clean_chat_reply(row["reply"], row["answer"],
                                             [q.answer for q in told[row["user"]].questions
                                              if q.answer.lower() != row["answer"].lower()],
                                             row["retrieved"], row["question"])
        row["says_unknown"] = says_unknown(row["reply"])
        row["well_formed"] = well_formed(row["reply"])
    unknown_rows = []
    for index, user in enumerate(users):
        # The user's memory is still the one `recall_rows` built last only for the last user: rebuild.
        replay_sessions(contender, user)
        for offset in range(untold):
            question, what = UNTOLD_QUESTIONS[(index * untold + offset) % len(UNTOLD_QUESTIONS)]
            reply = contender.ask(question) or ""
            unknown_rows.append({"user": user.user, "question": question, "reply": reply,
                                 "says_unknown": says_unknown(reply), "well_formed": well_formed(reply),
                                 "reference": f"I don't know {what} — you haven't told me."})
            if progress is not None:
                progress.update()
    count, unknown_count = max(1, len(rows)), max(1, len(unknown_rows))
    summary = {
        "recall": sum(r["recalled"] for r in rows) / count,
        "recall_not_hedged": sum(r["recalled"] and not r["says_unknown"] for r in rows) / count,
        "clean": sum(r["clean"] for r in rows) / count,
        "clean_chat": sum(r["clean_chat"] for r in rows) / count,
        "well_formed": sum(r["well_formed"] for r in rows + unknown_rows) / max(1, len(rows) + len(unknown_rows)),
        "told_says_unknown": sum(r["says_unknown"] for r in rows) / count,
        "untold_says_unknown": sum(r["says_unknown"] for r in unknown_rows) / unknown_count,
        "questions": len(rows), "untold_questions": len(unknown_rows),
        "mean_words": sum(words(r["reply"]) for r in rows) / count,
        "seconds": time.perf_counter() - started,
    }
    summary.update(_text_metrics([r["reply"] for r in rows + unknown_rows],
                                 [r["reference"] for r in rows + unknown_rows]))
    return {"summary": summary, "rows": rows, "untold_rows": unknown_rows}


def continual_result(contender: Any, facts: int, questions: int, seed: int) -> dict[str, Any]:
    """The suite's continual task (`memlm.eval.tasks.continual`) for one seed: recall, recall of the
    oldest quarter (the facts learned first), and how many replies are well formed."""
    from types import SimpleNamespace

    from memlm.eval.tasks.continual import ContinualTask

    suite = SimpleNamespace(facts=facts, fact_questions=questions, seed=seed)
    result = ContinualTask().run("continual/facts", contender, SimpleNamespace(suite=suite))
    details = result.details
    oldest = sorted(details, key=lambda d: d["since"])[-max(1, len(details) // 4):]
    summary = {"recall": sum(d["recalled"] for d in details) / max(1, len(details)),
               "oldest": sum(d["recalled"] for d in oldest) / max(1, len(oldest)),
               "well_formed": sum(well_formed(d["reply"]) for d in details) / max(1, len(details))}
    return {"summary": summary, "rows": details}


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute ROUGE-L and BERTScore of a saved `memlm eval chat` report (e.g. one made on a host
    without rouge-score / bert-score) from its replies, in place."""
    for by_seed in report["systems"].values():
        for result in by_seed.values():
            rows = result["rows"] + result["untold_rows"]
            result["summary"].pop("bertscore_error", None)
            result["summary"].update(_text_metrics([r["reply"] for r in rows], [r["reference"] for r in rows]))
    return report


def _text_metrics(replies: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-L and BERTScore F1 (offline MiniLM, `memlm.eval.metrics`) of replies against references."""
    from memlm.eval import metrics

    scores: dict[str, float] = {}
    with contextlib.suppress(ImportError):  # rouge-score missing (e.g. on the GPU host): `--rescore` later
        scores["rougeL"] = metrics.rouge(replies, references)["rougeL"]
    try:
        scores["bertscore_f1"] = metrics.bertscore(replies, references)["f1"]
    except Exception as error:  # noqa: BLE001 - the MiniLM folder may be missing; the rest still counts
        scores["bertscore_error"] = str(error)[:200]  # type: ignore[assignment]
    return scores
