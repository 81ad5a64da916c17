"""CPU time (not wall time) per search and per chat turn at 100K facts, one thread: a measure that a busy
shared machine inflates far less than wall time (docs/bank.md, "Latency").

    python benchmarks/bank_cputime.py
"""
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bank_latency as bl  # noqa: E402

import memlm  # noqa: E402
from memlm.embeddings import sentence_encoder  # noqa: E402

enc = sentence_encoder()
rng = random.Random(0)
seen: set[str] = set()
with tempfile.TemporaryDirectory() as d:
    m = memlm.Memory(Path(d) / "f.sqlite")
    texts = bl.unique(bl.fact_text, rng, 100_000, seen)
    real = enc.encode(texts[:2000], batch_size=256)
    vecs = np.concatenate([real, bl.random_unit_vectors(98_000, 384, np.random.default_rng(0))])
    bl.bulk_insert(m.store, bl.USER, texts, vecs)
    qs = [bl.question_text(rng) for _ in range(120)]
    for q in qs[:20]:
        m.search(q, user=bl.USER, limit=5)
    out = {}
    def cpu(fn, items):
        t = []
        for x in items:
            a = time.process_time()
            fn(x)
            t.append((time.process_time() - a) * 1000)
        return {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95))}
    out["embed"] = cpu(lambda q: enc.encode([q]), qs[20:])
    vq = [enc.encode([q])[0] for q in qs[20:]]
    out["store_dense"] = cpu(lambda v: m.store.search(bl.USER, v, 32), vq)
    out["store_bm25"] = cpu(lambda q: m.store.lexical_search(bl.USER, q, 32), qs[20:])
    out["search_total"] = cpu(lambda q: m.search(q, user=bl.USER, limit=5), qs[20:])
    turns = bl.unique_turns(rng, 120, seen)
    for t in turns[:20]:
        m.add(t, user=bl.USER)
    out["add_turn"] = cpu(lambda t: m.add(t, user=bl.USER), turns[20:])
    print(json.dumps({k: {a: round(b, 2) for a, b in v.items()} for k, v in out.items()}))
