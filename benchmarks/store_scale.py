"""Fact-store backends side by side: writes/s and search p95 at N facts (docs/scale.md).

    OMP_NUM_THREADS=1 python benchmarks/store_scale.py --facts 20000 --users 20

Each backend gets the same facts (random unit vectors of 384 dims, MiniLM's width, spread evenly over
`--users` users), written one `FactStore.add` at a time (one transaction each, as the API writes
them) -- or, with `--bulk B`, loaded by `add_many` (B facts of one user per transaction) and then
`--single-writes` more added one at a time, which gives the writes/s at that size; then `--queries`
searches (k=5) of random users, after one warm-up search per user (a server's steady state: the
SQLite store's per-user FAISS index is built on a user's first search).
PostgreSQL + pgvector runs on a server `pgserver` starts in a temporary folder on this machine
(same disk as the SQLite file); Milvus is milvus-lite in a folder (vectors; rows in SQLite). Figures
are also printed as ratios to sqlite in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memlm.facts.backends import open_fact_store

DIMENSION = 384


def unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def measure(url: str, facts: int, users: int, queries: int, seed: int, bulk: int = 0, single_writes: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    store = open_fact_store(url, DIMENSION, "bench")
    figures: dict = {}
    started = time.perf_counter()
    if bulk:  # `add_many`: one transaction per batch of one user's facts
        for first in range(0, facts, bulk * users):
            chunk = unit(rng, min(bulk * users, facts - first))
            for user in range(users):
                numbers = range(first + user, first + len(chunk), users)
                if numbers:
                    store.add_many(f"u{user}", [f"fact number {n}" for n in numbers],
                                   chunk[[n - first for n in numbers]])
        figures["bulk_load_s"] = time.perf_counter() - started
        figures["bulk_rows_per_s"] = facts / figures["bulk_load_s"]
        extra = unit(rng, single_writes)
        started = time.perf_counter()
        for number in range(single_writes):  # per-call writes, on top of the loaded facts
            store.add(f"u{number % users}", f"late fact {number}", extra[number], importance=1.0)
        write_s = time.perf_counter() - started
        written = single_writes
        vectors = extra if single_writes >= users else unit(rng, users)
    else:
        vectors = unit(rng, facts)
        for number in range(facts):
            store.add(f"u{number % users}", f"fact number {number}", vectors[number], importance=1.0)
        write_s = time.perf_counter() - started
        written = facts
    print(f"  {facts:,} facts written; warming up", file=sys.stderr, flush=True)
    warm = time.perf_counter()
    for user in range(users):  # warm-up: one search per user
        store.search(f"u{user}", vectors[user], 5)
    figures["warm_up_s"] = time.perf_counter() - warm
    print(f"  warm-up searches of {users} users in {figures['warm_up_s']:.0f} s", file=sys.stderr, flush=True)
    latencies = []
    probes = unit(rng, queries)
    for number in range(queries):
        user = f"u{int(rng.integers(users))}"
        tick = time.perf_counter()
        found = store.search(user, probes[number], 5)
        latencies.append(time.perf_counter() - tick)
        assert len(found) == 5 and all(fact.user == user for fact, _ in found)
    store.close()
    return {"facts": facts, "users": users, **figures, "writes": written,
            "writes_per_s": written / write_s if written else float("nan"),
            "search_p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "search_p95_ms": 1000 * float(np.percentile(latencies, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--backends", default="sqlite,postgres,milvus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bulk", type=int, default=0,
                        help="load with add_many, this many facts of one user per transaction (0: one add each)")
    parser.add_argument("--single-writes", type=int, default=2000,
                        help="with --bulk: per-call adds timed after the load (the writes/s figure)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        server = None
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = str(Path(folder) / "facts.sqlite")
            elif backend == "postgres":
                import pgserver

                server = pgserver.get_server(Path(folder) / "pg", cleanup_mode="stop")
                url = server.get_uri()
            elif backend == "milvus":  # milvus-lite in a folder; rows in its SQLite file
                url = f"milvus://{Path(folder) / 'milvus'}"
            else:
                raise SystemExit(f"unknown backend {backend}")
            results[backend] = measure(url, args.facts, args.users, args.queries, args.seed, args.bulk,
                                       args.single_writes)
            print(backend, json.dumps(results[backend]), flush=True)
        if server is not None:
            server.cleanup()
    if "sqlite" in results:
        base = results["sqlite"]
        for figures in results.values():
            figures["writes_vs_sqlite"] = figures["writes_per_s"] / base["writes_per_s"]
            figures["p95_vs_sqlite"] = figures["search_p95_ms"] / base["search_p95_ms"]
    print(f"{'backend':10} {'facts':>9} {'writes/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'writes x':>9} {'p95 x':>7}")
    for backend, f in results.items():
        print(f"{backend:10} {f['facts']:>9,} {f['writes_per_s']:>9.0f} {f['search_p50_ms']:>8.2f} "
              f"{f['search_p95_ms']:>8.2f} {f.get('writes_vs_sqlite', float('nan')):>9.2f} "
              f"{f.get('p95_vs_sqlite', float('nan')):>7.2f}")
    if args.output:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
        import os

        args.output.write_text(json.dumps({"machine": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
                                           "args": vars(args) | {"output": None},
                                           "results": results}, indent=2))


if __name__ == "__main__":
    main()
