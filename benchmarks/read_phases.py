"""Where a chat turn's read goes, phase by phase, for one user with `--facts` facts (docs/benchmarks.md,
"The read of a chat turn since 2026-12-07").

The store is filled as `serve_load.py` fills it (`--real-facts` MiniLM-embedded facts and a secret code,
random unit vectors for the rest); then `--turns` turns alternate a statement (`bank_latency.turn_text`)
and the secret-code question, each read as the server reads it: `TurnEmbeddings` (one encoder call for
the message and the sentences it states), then `FactBank.retrieve`. The statements are all new; the
question repeats (so the encoder's cache serves it after its first time, as in the server). Timed apart:
the encoder call, the exact vector search (`FactStore.search`, k=32), BM25 (`FactStore.lexical_search`,
k=32) and the whole `retrieve` (which repeats both searches). Then cProfile of `--profile` other reads,
by cumulative time.

    python benchmarks/read_phases.py --facts 100000 --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bank_latency import bulk_insert, fact_text, random_unit_vectors, turn_text, unique  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--real-facts", type=int, default=500)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--profile", type=int, default=30, help="reads under cProfile (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from memlm.embeddings import MINILM_DIMENSION, sentence_encoder
    from memlm.facts.bank import FactBank, FactBankConfig
    from memlm.facts.extraction import extract_facts
    from memlm.facts.store import FactStore
    from memlm.server.engine import TurnEmbeddings

    torch.set_num_threads(args.threads)
    rng, vectors_rng = random.Random(0), np.random.default_rng(0)
    encoder = sentence_encoder()
    store = FactStore(Path(tempfile.mkdtemp()) / "facts.sqlite", MINILM_DIMENSION, "minilm:all-MiniLM-L6-v2")
    texts = unique(fact_text, rng, args.facts - 1, set())
    embedded = encoder.encode(["The user's secret code is AB12-CDEF00.", *texts[:args.real_facts]], batch_size=256)
    vectors = np.concatenate([embedded, random_unit_vectors(len(texts) - args.real_facts, MINILM_DIMENSION,
                                                            vectors_rng)])
    bulk_insert(store, "user", ["The user's secret code is AB12-CDEF00.", *texts], vectors)
    bank = FactBank(FactBankConfig(user="user", importance="constant"), store, encoder.encode)
    bank.retrieve("warm up", touch=False)  # builds the user's indexes: not measured

    def read(message: str, phases: dict[str, list[float]] | None = None) -> None:
        start = time.perf_counter()
        embed = TurnEmbeddings(encoder.encode, [message, *(fact.sentence for fact in extract_facts(message))])
        embedded_at = time.perf_counter()
        if phases is not None:
            vector = embed([message])[0]
            marks = [time.perf_counter()]
            store.search("user", vector, 32)
            marks.append(time.perf_counter())
            store.lexical_search("user", message, 32)
            marks.append(time.perf_counter())
        bank.embed = embed
        retrieve_start = time.perf_counter()
        bank.retrieve(message, touch=False)
        end = time.perf_counter()
        if phases is not None:
            for name, value in (("encoder", embedded_at - start), ("vector_search", marks[1] - marks[0]),
                                ("bm25", marks[2] - marks[1]), ("retrieve", end - retrieve_start),
                                ("read", (embedded_at - start) + (end - retrieve_start))):
                phases.setdefault(name, []).append(1000 * value)

    # new statements throughout (the encoder's cache never holds them); the question repeats, as in
    # serve_load, so after its first time it comes from the cache, as in the server
    messages = [turn_text(rng) if i % 2 == 0 else "What is my secret code?"
                for i in range(10 + args.turns + args.profile)]
    for message in messages[:10]:
        read(message)
    phases: dict[str, list[float]] = {}
    for message in messages[10:10 + args.turns]:
        read(message, phases)
    for name, values in phases.items():
        print(f"{name:14s} p50 {np.percentile(values, 50):7.2f}  p95 {np.percentile(values, 95):7.2f} ms (wall)")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for message in messages[10 + args.turns:]:
            read(message)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
