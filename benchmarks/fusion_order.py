"""Where the bank's best fact goes in the prompt: first or last, measured on multi-session recall.

The bank's prompt fusion (`memlm.fusion.fuse_facts`) lists the retrieved facts with the most
relevant one last, next to the question. This script measures that choice against the reverse order
on the multi-session users of several seeds, with the bank's own pipeline: facts extracted from every
user message by `memlm.Memory` (the same rules, MiniLM and ranking as the bank), the top two kept
(cosine >= 0.2), fused by `fuse_facts`, and the answer generated greedily (32 new tokens) with the
fact-token bonus. Three scores per reply:

* recall: the answer appears in the reply (what `memlm eval recall` reports);
* first sentence: the answer appears in the reply's first sentence;
* clean: the answer appears and no retrieved fact without it is repeated (60% of its words).

    python benchmarks/fusion_order.py --seeds 0,1,2 --out docs/results/fusion_order_cpu.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

import memlm
from memlm.data import multisession
from memlm.eval.scoring import contains, first_sentence
from memlm.fusion import FactTokenBias, fact_token_ids, fuse_facts
from memlm.memories.bank import BankConfig

ORDERS = ("best_last", "best_first")


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 3 and w not in ("user", "user's")}


def repeats(reply: str, fact: str) -> bool:
    words = content_words(fact)
    return bool(words) and len(words & content_words(reply)) / len(words) >= 0.6


def retrieved_facts(users: list[multisession.UserHistory], config: BankConfig) -> list[tuple[str, str, list[str]]]:
    """(question, answer, facts best first) for every question, retrieved as the bank does."""
    memory = memlm.Memory(None)
    cases = []
    for user in users:
        for session in user.sessions:
            for message, _ in session:
                memory.add(message, user=user.user)
        for question in user.questions:
            hits = memory.search(question.question, user=user.user, limit=config.top_k,
                                 min_similarity=config.min_similarity)["results"]
            cases.append((question.question, question.answer, [hit["memory"] for hit in hits]))
    return cases


@torch.no_grad()
def answer(model, tokenizer, question: str, facts_in_prompt_order: list[str], bias: float, max_new_tokens: int) -> str:
    # fuse_facts puts its first argument last: hand it the facts in the reverse of the wanted order
    messages = fuse_facts([{"role": "user", "content": question}], facts_in_prompt_order[::-1])
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    fact_tokens = fact_token_ids(tokenizer, facts_in_prompt_order)
    processors = LogitsProcessorList([FactTokenBias(fact_tokens, bias)] if bias and fact_tokens else [])
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id, logits_processor=processors)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = BankConfig()
    model, tokenizer = memlm.load_backbone()
    model.eval()
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cases = retrieved_facts(multisession.generate(n_users=args.users, seed=seed), config)
        for order in ORDERS:
            rows = []
            for question, gold, facts in tqdm(cases, desc=f"seed {seed}, {order}", unit="question"):
                placed = facts[::-1] if order == "best_last" else facts
                reply = answer(model, tokenizer, question, placed, config.fact_token_bias, args.max_new_tokens)
                others = [fact for fact in facts if not contains(fact, gold)]
                recalled = contains(reply, gold)
                rows.append({"question": question, "answer": gold, "facts_in_prompt_order": placed, "reply": reply,
                             "recalled": recalled, "first_sentence": contains(first_sentence(reply), gold),
                             "clean": recalled and not any(repeats(reply, fact) for fact in others)})
            results.setdefault(order, {})[str(seed)] = rows
    summary = {order: {score: sum(r[score] for rows in by_seed.values() for r in rows)
                       for score in ("recalled", "first_sentence", "clean")}
               for order, by_seed in results.items()}
    questions = sum(len(rows) for rows in results[ORDERS[0]].values())
    for order, scores in summary.items():
        print(f"{order:10s} " + "  ".join(f"{name} {value}/{questions}" for name, value in scores.items()))
    if args.out is not None:
        args.out.write_text(json.dumps({"command": "python benchmarks/fusion_order.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
            "questions": questions, "summary": summary, "seconds": time.perf_counter() - started,
            "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
