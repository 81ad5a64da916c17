"""Retrieval on long real conversations: does a search for a question find the turns that answer it?

Data (not shipped: give the path): a long-conversation benchmark whose questions name their evidence
turns. Two layouts are read:

* LoCoMo (github.com/snap-research/locomo, `data/locomo10.zip`): a JSON list of samples, or a folder
  of one JSON per sample (`multimodal_dialog/locomo10_v2/*.json`); each sample has `session_N` turn
  lists (`speaker`, `dia_id`, `text`, optional `blip_caption` for a shared photo), `session_N_date_time`
  and `qa` (`question`, `evidence`: dia_ids, `category`);
* LongMemEval-style: a JSON list of questions, each with its own `haystack_sessions` (turns with
  `role`, `content`, `has_answer`), `haystack_dates`, `haystack_session_ids`.

A question counts at k when *all* its evidence turns are among the k first results (questions
without evidence are left out). Every turn of a conversation is one memory of one user; turns are
added one at a time, as a chat would.

Two commands:

    # memlm end to end: memlm.Memory.add for every turn, Memory.search for every question;
    # recall@1/5/10 for the default (hybrid) search, BM25 alone and the dense encoder alone,
    # and the wall time of each add and search (one thread)
    python benchmarks/conversation_retrieval.py memlm PATH --out results.json

    # the design study: the same turns ranked offline by variants (text with speaker, session
    # fusion, fusion weights), weights chosen on one half of the conversations, reported on the other
    python benchmarks/conversation_retrieval.py study PATH --cache /tmp/cr-cache --out study.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

KS = (1, 5, 10)


@dataclass
class Turn:
    id: str  # the benchmark's own id of the turn (evidence names it)
    speaker: str
    text: str
    session: str
    date: str | None


@dataclass
class Question:
    text: str
    evidence: list[str]
    category: str


@dataclass
class Conversation:
    name: str
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


# --- reading the data ------------------------------------------------------------------------
def _locomo_sample(name: str, sample: dict) -> Conversation:
    dialogue = sample.get("conversation", sample)
    conversation = Conversation(name)
    number = 1
    while f"session_{number}" in dialogue or f"session_{number}_date_time" in dialogue:
        for turn in dialogue.get(f"session_{number}") or []:
            text = turn.get("text", "")
            if turn.get("blip_caption"):  # the photo a speaker shared is part of what they said
                text = f"{text} [shares {turn['blip_caption']}]"
            conversation.turns.append(Turn(turn["dia_id"], turn["speaker"], text.strip(), str(number),
                                           dialogue.get(f"session_{number}_date_time")))
        number += 1
    known = {turn.id for turn in conversation.turns}
    for qa in sample.get("qa", []):
        evidence = [e.strip() for item in qa.get("evidence", []) for e in str(item).split(";") if e.strip()]
        if evidence and all(e in known for e in evidence):
            conversation.questions.append(Question(qa["question"], evidence, str(qa.get("category"))))
    return conversation


def _longmemeval_item(index: int, item: dict) -> Conversation:
    conversation = Conversation(str(item.get("question_id", index)))
    dates = item.get("haystack_dates") or [None] * len(item["haystack_sessions"])
    names = item.get("haystack_session_ids") or [str(n) for n in range(len(item["haystack_sessions"]))]
    evidence = []
    for session, name, date in zip(item["haystack_sessions"], names, dates, strict=True):
        for number, turn in enumerate(session):
            turn_id = f"{name}:{number}"
            conversation.turns.append(Turn(turn_id, turn["role"], turn["content"].strip(), str(name), date))
            if turn.get("has_answer"):
                evidence.append(turn_id)
    if evidence:
        conversation.questions.append(Question(item["question"], evidence, str(item.get("question_type"))))
    return conversation


def load_conversations(path: str | os.PathLike) -> list[Conversation]:
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    conversations: list[Conversation] = []
    for file in files:
        data = json.loads(file.read_text(encoding="utf-8"))
        samples = data if isinstance(data, list) else [data]
        for index, sample in enumerate(samples):
            if "haystack_sessions" in sample:
                conversations.append(_longmemeval_item(index, sample))
            else:
                name = sample.get("sample_id") or (file.stem if len(samples) == 1 else f"{file.stem}-{index}")
                conversations.append(_locomo_sample(str(name), sample))
    conversations = [c for c in conversations if c.turns and c.questions]
    if not conversations:
        raise SystemExit(f"no conversation with questions and evidence found in {path}")
    return conversations


def recall_at(ranked: list[str], evidence: Iterable[str], ks: Iterable[int] = KS) -> dict[int, bool]:
    wanted = set(evidence)
    return {k: wanted <= set(ranked[:k]) for k in ks}


def summarise(hits: list[dict[int, bool]]) -> dict[str, float]:
    return {f"R@{k}": round(100.0 * sum(h[k] for h in hits) / max(len(hits), 1), 1) for k in KS}


# --- memlm end to end --------------------------------------------------------------------------
def memlm_turn_message(turn: Turn) -> dict:
    """A turn as a mem0 message: the speaker's name is the message's `name` (mem0's actor)."""
    return {"role": "user", "name": turn.speaker, "content": turn.text}


def run_memlm(conversations: list[Conversation], retrievals: list[str], limit_questions: int | None) -> list[dict]:
    """Every turn added once (`Memory.add`), then every question searched once per retrieval setting
    (`Memory.search`; the setting changes only how a search ranks). Times are wall time and this
    process's CPU time per call (one torch thread): on a shared machine the CPU time is what an
    idle one would take."""
    import dataclasses

    import torch

    import memlm

    torch.set_num_threads(1)
    add_wall: list[float] = []
    add_cpu: list[float] = []
    runs = []
    with memlm.Memory(None) as memory:
        memory.search("warm up", user_id="warm-up")  # load the encoder outside the timings
        memory.add("warm up", user_id="warm-up", infer=False)
        users, ids = [], []
        for number, conversation in enumerate(conversations):
            user = f"conversation-{number}"
            id_of: dict[int, str] = {}
            for turn in conversation.turns:
                wall, cpu = time.perf_counter(), time.process_time()
                added = memory.add([memlm_turn_message(turn)], user_id=user, infer=False, run_id=f"s{turn.session}",
                                   metadata={"turn": turn.id, "date": turn.date})
                add_wall.append(1000 * (time.perf_counter() - wall))
                add_cpu.append(1000 * (time.process_time() - cpu))
                for result in added["results"]:
                    if result["id"] is not None:  # a repeated turn ("Thanks!") is one memory: the first
                        id_of.setdefault(result["id"], turn.id)
            users.append(user)
            ids.append(id_of)
        default = memory.bank.config
        for retrieval in retrievals:
            memory.bank.config = dataclasses.replace(default, retrieval=retrieval)
            search_wall: list[float] = []
            search_cpu: list[float] = []
            hits: list[dict[int, bool]] = []
            by_category: dict[str, list[dict[int, bool]]] = {}
            for conversation, user, id_of in zip(conversations, users, ids, strict=True):
                for question in conversation.questions[:limit_questions]:
                    wall, cpu = time.perf_counter(), time.process_time()
                    found = memory.search(question.text, filters={"user_id": user}, top_k=max(KS))["results"]
                    search_wall.append(1000 * (time.perf_counter() - wall))
                    search_cpu.append(1000 * (time.process_time() - cpu))
                    hit = recall_at([id_of.get(r["id"], "?") for r in found], question.evidence)
                    hits.append(hit)
                    by_category.setdefault(question.category, []).append(hit)
            run = {"retrieval": retrieval, "questions": len(hits), **summarise(hits),
                   "by_category": {name: {"questions": len(h), **summarise(h)}
                                   for name, h in sorted(by_category.items())},
                   "add_ms": {"wall": _latency(add_wall), "cpu": _latency(add_cpu)},
                   "search_ms": {"wall": _latency(search_wall), "cpu": _latency(search_cpu)}}
            print(json.dumps(run), flush=True)
            runs.append(run)
    return runs


def _latency(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "mean": round(statistics.fmean(ordered), 2)}


# --- the study: variants ranked offline -------------------------------------------------------
def _cached(cache: Path | None, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    if cache is None:
        return compute()
    file = cache / f"{name}.npy"
    if file.exists():
        return np.load(file, allow_pickle=False)
    vectors = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, vectors, allow_pickle=False)
    return vectors


def _turn_texts(conversation: Conversation, form: str) -> list[str]:
    """How a turn is indexed: `plain` (its words), `speaker` ("Caroline: ..."), `context` (the
    previous turn of its session too, for BM25: a reply's meaning is half in what it answers)."""
    turns = conversation.turns
    if form == "plain":
        return [t.text for t in turns]
    spoken = [f"{t.speaker}: {t.text}" for t in turns]
    if form == "speaker":
        return spoken
    return [spoken[i] if i == 0 or turns[i - 1].session != turns[i].session else f"{spoken[i - 1]} {spoken[i]}"
            for i in range(len(turns))]


def _encoder(name: str) -> tuple[Callable[[list[str]], np.ndarray], Callable[[list[str]], np.ndarray]]:
    """(embed passages, embed queries) of an encoder: MiniLM is symmetric, e5 has its prefixes."""
    if name == "minilm":
        from memlm.embeddings import sentence_encoder

        return sentence_encoder().encode, sentence_encoder().encode
    from memlm.embeddings import e5_encoder

    return e5_encoder().encode_passages, e5_encoder().encode_queries


def study(conversations: list[Conversation], cache: Path | None, encoders: list[str], quick: bool = False) -> dict:
    from memlm.facts.lexical import LexicalIndex

    dense_forms, lexical_forms = ("plain", "speaker", "context"), ("plain", "speaker", "context")
    all_questions = [q.text for c in conversations for q in c.questions]
    total = sum(len(c.turns) for c in conversations)
    vectors: dict[tuple[str, str], np.ndarray] = {}
    queries: dict[str, np.ndarray] = {}
    for encoder in encoders:
        tag = f"{encoder}-{total}"
        queries[encoder] = _cached(cache, f"{tag}-questions",
                                   lambda encoder=encoder: _encoder(encoder)[1](all_questions))
        for form in dense_forms:
            vectors[(encoder, form)] = _cached(cache, f"{tag}-{form}", lambda encoder=encoder, form=form: _encoder(
                encoder)[0]([text for c in conversations for text in _turn_texts(c, form)]))

    # Per question: the cosine of every turn of its conversation (per encoder and text form) and BM25.
    rows = []
    turn_offset = question_offset = 0
    for number, conversation in enumerate(conversations):
        n = len(conversation.turns)
        names = list(dict.fromkeys(t.session for t in conversation.turns))
        sessions = np.asarray([names.index(t.session) for t in conversation.turns])
        ids = [t.id for t in conversation.turns]
        session_index = LexicalIndex()  # each session as one document: what the talk was about
        for number_in, name in enumerate(names):
            session_index.add(number_in, " ".join(text for text, session in zip(
                _turn_texts(conversation, "speaker"), (t.session for t in conversation.turns), strict=True)
                if session == name))
        indexes = {}
        for form in lexical_forms:
            indexes[form] = LexicalIndex()
            for i, text in enumerate(_turn_texts(conversation, form)):
                indexes[form].add(i, text)
        for q, question in enumerate(conversation.questions):
            bm25 = {}
            for form in lexical_forms:
                bm25[form] = np.zeros(n, dtype=np.float32)
                for i, value in indexes[form].search(question.text, n):
                    bm25[form][i] = value
            cosine = {key: matrix[turn_offset:turn_offset + n] @ queries[key[0]][question_offset + q]
                      for key, matrix in vectors.items()}
            session_bm25 = np.zeros(len(names), dtype=np.float32)
            for i, value in session_index.search(question.text, len(names)):
                session_bm25[i] = value
            if session_bm25.max() > 0:
                session_bm25 /= session_bm25.max()
            rows.append((number, question, cosine, bm25, (sessions, session_bm25[sessions]), ids))
        turn_offset += n
        question_offset += len(conversation.questions)

    def score(cosine, bm25, sessions, encoder, dense_form, lexical_form, weight, session_weight, normalise,
              session_mode="max", neighbour_weight=0.0):
        lexical = bm25[lexical_form]
        if weight == "bm25 only":
            fused = lexical.copy()
        elif normalise == "z":  # both on one scale per question: mean 0, unit spread
            dense = cosine[(encoder, dense_form)]
            fused = (dense - dense.mean()) / (dense.std() + 1e-6) + weight * (lexical - lexical.mean()) / (
                lexical.std() + 1e-6)
        else:
            best = lexical.max()
            fused = cosine[(encoder, dense_form)] + weight * (lexical / best if best > 0 else lexical)
        session_of, session_lexical = sessions
        if session_weight and session_mode == "max":
            # each turn also gets its session's best score: evidence lives where the talk was about it
            best = np.full(session_of.max() + 1, -np.inf)
            np.maximum.at(best, session_of, fused)
            fused = fused + session_weight * best[session_of]
        elif session_weight and session_mode == "doc":
            fused = fused + session_weight * session_lexical  # the session as one document, BM25 / best
        if neighbour_weight:
            # a turn next to a strong turn of its session: questions often span a turn and its answer
            before = np.r_[-np.inf, fused[:-1]]
            after = np.r_[fused[1:], -np.inf]
            same_before = np.r_[False, session_of[1:] == session_of[:-1]]
            same_after = np.r_[session_of[:-1] == session_of[1:], False]
            near = np.maximum(np.where(same_before, before, -np.inf), np.where(same_after, after, -np.inf))
            fused = fused + neighbour_weight * np.where(np.isfinite(near), np.maximum(near - fused, 0), 0)
        return fused

    def evaluate(variant: dict, half: int | None) -> dict[str, float]:
        hits = []
        for number, question, cosine, bm25, sessions, ids in rows:
            if half is not None and number % 2 != half:
                continue
            fused = score(cosine, bm25, sessions, **variant)
            order = np.argsort(-fused, kind="stable")[:max(KS)]
            hits.append(recall_at([ids[i] for i in order], question.evidence))
        return {"questions": len(hits), **summarise(hits)}

    variants: list[dict] = []
    base = dict(encoder=encoders[0], dense_form="plain", session_weight=0.0, normalise="max")
    for lexical_form in lexical_forms:
        variants.append(dict(base, lexical_form=lexical_form, weight="bm25 only"))
    for encoder in encoders:
        for dense_form in dense_forms:
            variants.append(dict(base, encoder=encoder, dense_form=dense_form, lexical_form="plain", weight=0.0))
            for lexical_form in lexical_forms:
                for weight in (0.1, 0.5, 1.0, 2.0):
                    for session_mode, session_weights in (("max", (0.0, 0.3, 0.6)), ("doc", (0.1, 0.3, 0.6))):
                        for session_weight in session_weights:
                            for neighbour_weight in (0.0, 0.3):
                                variants.append(dict(encoder=encoder, dense_form=dense_form, lexical_form=lexical_form,
                                                     weight=weight, session_weight=session_weight, normalise="max",
                                                     session_mode=session_mode, neighbour_weight=neighbour_weight))
                for weight in (1.0, 2.0):
                    variants.append(dict(encoder=encoder, dense_form=dense_form, lexical_form=lexical_form,
                                         weight=weight, session_weight=0.3, normalise="z", session_mode="doc"))
    if quick:  # memlm's own family only: words with the message before, W 1, run weights
        variants = [v for v in variants if v["lexical_form"] == "context" and v["weight"] in (1.0, "bm25 only")
                    and v["normalise"] == "max" and v.get("session_mode", "max") == "max"
                    and not v.get("neighbour_weight")]
    report = []
    for variant in variants:
        entry = {**variant, "fit_half": evaluate(variant, 0), "check_half": evaluate(variant, 1),
                 "all": evaluate(variant, None)}
        report.append(entry)
        print(json.dumps(entry), flush=True)
    chosen = max((e for e in report if e["weight"] != "bm25 only"),
                 key=lambda e: (e["fit_half"]["R@5"], e["fit_half"]["R@1"]))
    return {"variants": report, "chosen_on_fit_half": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("memlm", "study"))
    parser.add_argument("data", help="the benchmark's JSON file or folder (see the module docstring)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--cache", help="study: folder for the turn vectors (computed once)")
    parser.add_argument("--encoders", default="minilm", help="study: minilm and/or e5, comma-separated")
    parser.add_argument("--retrievals", default="hybrid:0.1,lexical,dense",
                        help="memlm: the bank's retrieval settings to run (hybrid:0.1 is the default)")
    parser.add_argument("--quick", action="store_true", help="study: only the variants memlm's settings span")
    parser.add_argument("--conversations", type=int, help="only the first N conversations")
    parser.add_argument("--questions", type=int, help="memlm: only the first N questions of each conversation")
    args = parser.parse_args()
    conversations = load_conversations(args.data)[:args.conversations]
    print(f"{len(conversations)} conversations, {sum(len(c.turns) for c in conversations)} turns, "
          f"{sum(len(c.questions) for c in conversations)} questions with evidence", flush=True)
    if args.command == "memlm":
        results = {"runs": run_memlm(conversations, args.retrievals.split(","), args.questions)}
    else:
        results = study(conversations, Path(args.cache) if args.cache else None, args.encoders.split(","),
                        args.quick)
        print("chosen on the fit half:", json.dumps(results["chosen_on_fit_half"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
