"""Can a similarity floor make the `chat` preset say "I don't know"? The fused relevance of what its bank
retrieves for told questions (the fact holding the answer) against never-told ones (the best fact), on the
users of `memlm eval chat` (CPU, about a minute):

    python benchmarks/chat_floor.py --seeds 0,1,2 --out floor.json

For each floor it prints the share of told questions whose answer's fact would still be retrieved and the
share of never-told questions that would retrieve nothing (an empty memories block, where the preset was
trained to say it does not know).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import memlm
from memlm.data import multisession
from memlm.eval.chat import UNTOLD_QUESTIONS
from memlm.eval.contenders import Contender
from memlm.eval.recall import replay_sessions
from memlm.eval.scoring import contains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--questions", type=int, default=10, help="told questions per user")
    parser.add_argument("--untold", type=int, default=4, help="never-told questions per user")
    parser.add_argument("--floors", default="0.2,0.3,0.35,0.4,0.45,0.5")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = memlm.load_backbone()
    contender = Contender("chat", model, tokenizer)
    facts = contender.model.memories["bank"].facts
    told, untold = [], []

    def ranked(question: str) -> list[tuple[str, float]]:  # every hit, no floor, nothing marked used
        return [(hit.fact.text, hit.relevance) for hit in facts.retrieve(question, min_similarity=-1.0, touch=False)]

    for seed in (int(seed) for seed in args.seeds.split(",")):
        for index, user in enumerate(multisession.generate(args.users, 20, 4, seed)):  # as `memlm eval chat`
            replay_sessions(contender, user)
            step = max(1, len(user.questions) // args.questions)
            for question in user.questions[::step][:args.questions]:
                hits = ranked(question.question)
                relevance = next((score for text, score in hits if contains(text, question.answer)), None)
                told.append({"seed": seed, "question": question.question, "answer": question.answer,
                             "answer_relevance": relevance, "hits": hits})
            for offset in range(args.untold):
                question, _ = UNTOLD_QUESTIONS[(index * args.untold + offset) % len(UNTOLD_QUESTIONS)]
                hits = ranked(question)
                untold.append({"seed": seed, "question": question, "best_relevance": max(s for _, s in hits)
                               if hits else None, "hits": hits})
    contender.close()
    print(f"{len(told)} told questions (answer's fact among the hits: "
          f"{sum(t['answer_relevance'] is not None for t in told)}), {len(untold)} never-told")
    print("floor  told: answer's fact kept  never-told: nothing retrieved")
    for floor in (float(value) for value in args.floors.split(",")):
        kept = sum(t["answer_relevance"] is not None and t["answer_relevance"] >= floor for t in told) / len(told)
        empty = sum(u["best_relevance"] is None or u["best_relevance"] < floor for u in untold) / len(untold)
        print(f"{floor:5.2f}  {kept:26.1%}  {empty:29.1%}")
    if args.out:
        args.out.write_text(json.dumps({"told": told, "untold": untold}, indent=1))


if __name__ == "__main__":
    main()
