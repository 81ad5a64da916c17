"""The sentence encoder on a chat turn's read: CPU time and retrieval overlap of its variants against the
padded float32 batch (docs/benchmarks.md, "The read of a chat turn since 2026-12-07").

Variants, each on the batches a chat turn makes (the message and the sentences it states, from
`bank_latency.turn_text`; and the one-text question of `serve_load`):

* padded: sentence-transformers' `encode` (the reference);
* packed: `SentenceEncoder`'s packed row (one sequence, block-diagonal mask), what the server uses;
* int8: `torch.ao.quantization.quantize_dynamic` of every linear layer (per-channel weights), not used.

Recall@k: the overlap of the top k facts found with the variant's vectors and with the padded ones, on
`continual_facts` (1,000 facts and questions) and `multisession` (5 users x 100 messages, 20 questions
each); facts and questions are embedded in turn-sized batches of 3 for packed (what a turn does), in
full batches for int8 (whose facts are the padded float32 ones: only the query changes).

    python benchmarks/encoder_read.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bank_latency import turn_text  # noqa: E402 - benchmarks/ is put on the path just above


def overlap(reference: np.ndarray, other: np.ndarray, ks: tuple[int, ...] = (1, 2, 5, 10)) -> dict[int, float]:
    """Mean |top-k(reference) & top-k(other)| / k over rows of two (questions x facts) score matrices."""
    result = {}
    for k in ks:
        a, b = np.argsort(-reference, 1)[:, :k], np.argsort(-other, 1)[:, :k]
        result[k] = round(float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--turns", type=int, default=40)
    args = parser.parse_args()

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    from memlm.data import continual_facts, multisession
    from memlm.embeddings import SentenceEncoder, minilm_path
    from memlm.facts.extraction import extract_facts

    torch.set_num_threads(args.threads)
    encoder = SentenceEncoder(minilm_path(), cache_size=0)
    assert encoder._packed is not None, "the packed path is off for this model"
    int8_model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder.model),
                                                        {torch.nn.Linear: per_channel_dynamic_qconfig})

    def padded(texts: list[str], model=encoder.model) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False), dtype=np.float32)

    def packed(texts: list[str]) -> np.ndarray:
        return np.concatenate([encoder._packed(texts[i:i + 3]) if len(texts[i:i + 3]) > 1
                               else padded(texts[i:i + 3]) for i in range(0, len(texts), 3)])

    def int8(texts: list[str]) -> np.ndarray:
        return padded(texts, int8_model)

    rng = random.Random(0)
    statements = []
    for _ in range(args.turns):
        message = turn_text(rng)
        statements.append(list(dict.fromkeys([message, *(fact.sentence for fact in extract_facts(message))])))
    report: dict = {"threads": args.threads, "torch": torch.__version__, "cpu_ms": {}, "cosine_to_padded_min": {},
                    "recall_vs_padded": {}}
    for label, batches in (("statement", statements), ("question", [["What is my secret code?"]] * args.turns)):
        for name, run in (("padded", padded), ("packed", packed), ("int8", int8)):
            for batch in batches[:5]:
                run(batch)
            times, cosines = [], []
            for batch in batches:
                start = time.thread_time()
                vectors = run(batch)
                times.append(1000 * (time.thread_time() - start))
                cosines.append(float((vectors * padded(batch)).sum(1).min()))
            report["cpu_ms"][f"{label}/{name}"] = {"p50": round(float(np.percentile(times, 50)), 2),
                                                   "p95": round(float(np.percentile(times, 95)), 2)}
            report["cosine_to_padded_min"][f"{label}/{name}"] = round(min(cosines), 7)

    items = continual_facts.generate(n=1000, seed=0)
    facts, questions = [item.fact for item in items], [item.question for item in items]
    reference = padded(questions) @ padded(facts).T
    report["recall_vs_padded"]["continual_facts/packed"] = overlap(reference, packed(questions) @ packed(facts).T)
    report["recall_vs_padded"]["continual_facts/int8"] = overlap(reference, int8(questions) @ padded(facts).T)
    for history in multisession.generate(n_users=5, n_sessions=20, seed=0):
        facts = [message for session in history.sessions for message, _ in session]
        questions = [question.question for question in history.questions]
        reference = padded(questions) @ padded(facts).T
        for name, scores in (("packed", packed(questions) @ packed(facts).T),
                             ("int8", int8(questions) @ padded(facts).T)):
            report["recall_vs_padded"][f"multisession/{history.user}/{name}"] = overlap(reference, scores)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
