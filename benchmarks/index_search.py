"""Search latency and recall@k of every vector-index backend, against exact search, by store size.

Vectors are either random (no structure: the worst case for approximate search) or real final
hidden states of the default model over packaged public-domain text (what kNN-LM stores).
Latency is per single query (queries issued one at a time, as a decode step does), median over
the queries; recall@k is measured against exact torch search on the same vectors.

    python benchmarks/index_search.py --sizes 10000,100000 --data random
    python benchmarks/index_search.py --sizes 1000000 --data hidden --device cuda   # hidden states made on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from memlm.store import make_index

WIDTH = 576  # SmolLM2-135M's hidden size


def random_data(count: int, queries: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, WIDTH, generator=generator), torch.randn(queries, WIDTH, generator=generator)


def hidden_data(count: int, queries: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states of the default model over Gutenberg + Paul Graham text; the queries are
    states of text held out from the stored part."""
    import memlm
    from memlm.data.corpora import gutenberg_texts, pg_essays

    model, tokenizer = memlm.load_backbone(device=device)
    texts = list(gutenberg_texts().values()) + list(pg_essays().values())
    ids = torch.cat([tokenizer(text, return_tensors="pt").input_ids[0] for text in texts])
    needed = count + queries * 50
    if ids.shape[0] < needed:
        ids = ids.repeat(needed // ids.shape[0] + 1)  # more vectors than text: the store repeats text
    states = []
    with torch.no_grad():
        for start in range(0, needed, 2048):
            chunk = ids[start: start + 2048].unsqueeze(0).to(device)
            hidden = model(chunk, output_hidden_states=True).hidden_states[-1][0]
            states.append(hidden.float().cpu())
    states = torch.cat(states)[:needed]
    return states[:count], states[count::50][:queries]  # queries spread over the held-out part


def configurations(count: int) -> list[tuple[str, dict]]:
    nlist = 1024 if count >= 500_000 else max(16, int(4 * count ** 0.5) // 16 * 16)
    configs = [("torch", {}), ("faiss-flat", {})]
    configs += [("faiss-ivf", {"nlist": nlist, "nprobe": nprobe}) for nprobe in (8, 32, 128)]
    configs += [("faiss-hnsw", {"m": 32, "ef_search": ef, "ef_construction": 80}) for ef in (64, 128, 256)]
    return configs


def run(count: int, data: str, metric: str, k: int, queries: int, device: str) -> list[dict]:
    vectors, probe = random_data(count, queries) if data == "random" else hidden_data(count, queries, device)
    ids = torch.arange(count)
    exact = make_index("torch", WIDTH, metric)
    exact.add(vectors, ids)
    truth = exact.search(probe, k)[1]
    rows, built = [], {}
    for backend, options in configurations(count):
        build_key = (backend, options.get("nlist"), options.get("m"))
        started = time.perf_counter()
        if build_key in built and backend != "torch":
            index = built[build_key]  # same structure, only the search-time knob changes
            if backend == "faiss-ivf":
                index.set_nprobe(options["nprobe"])
            elif backend == "faiss-hnsw":
                index.set_ef_search(options["ef_search"])
            build_seconds = 0.0
        else:
            index = make_index(backend, WIDTH, metric, **options)
            if backend == "faiss-ivf":
                index.train_size = count  # train once, on everything
            index.add(vectors, ids)
            build_seconds = time.perf_counter() - started
            built[build_key] = index
        latencies, found = [], []
        for query in probe:
            started = time.perf_counter()
            found.append(index.search(query.unsqueeze(0), k)[1])
            latencies.append((time.perf_counter() - started) * 1000)
        found = torch.cat(found)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
        rows.append({"size": count, "data": data, "backend": backend, "options": options,
                     "recall_at_k": hits / truth.numel(), "ms_per_query": statistics.median(latencies),
                     "build_seconds": round(build_seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--data", default="random", choices=["random", "hidden"])
    parser.add_argument("--metric", default="l2", choices=["ip", "l2"])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="where hidden states are computed (search runs on CPU)")
    parser.add_argument("--out", default=None, help="write all rows as JSON here")
    args = parser.parse_args()
    import faiss

    print(f"# {platform.machine()}, {torch.get_num_threads()} torch threads, {faiss.omp_get_max_threads()} FAISS "
          f"threads, faiss {faiss.__version__}, torch {torch.__version__}", flush=True)
    rows = [row for size in map(int, args.sizes.split(",")) for row in run(size, args.data, args.metric, args.k,
                                                                            args.queries, args.device)]
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
