"""Recall of cluster-ordered page search against exact search, on the real model's stored keys and queries.

`knn-joint` memorizes `--stored` tokens of real text (write-only passes: the store is what the bare
forward computes), then one more segment is read with memory and every layer's search queries are
recorded. For each setting of (page_size, probe_pages) the same queries are searched through
cluster-ordered pages (memlm.store.clusters: k-means trained on these keys) and exactly, over the
same items; reported: recall@k (the share of the exact top-k that cluster search also returns),
the share of the exact top-k's attention mass recovered (softmax over the exact top-k logits,
summed over the items found: missing a low-weight item matters less than missing the best one),
and the candidate count per query.

    python benchmarks/cluster_recall.py --stored 16384 --out docs/results/cluster_recall_cpu.json
    python3 benchmarks/cluster_recall.py --device cuda --dtype bfloat16 --stored 262144 --out cluster_recall_h200.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from knn_speed import token_stream  # noqa: E402 - the same real text as the speed benchmark

from memlm.store.clusters import ClusterIndex, ClusterSearch, cluster_search  # noqa: E402
from memlm.store.group import MemoryGroup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--stored", type=int, default=16384)
    parser.add_argument("--segment", type=int, default=None, help="tokens per segment (1024 on cuda, 512 on cpu)")
    parser.add_argument("--layers", default="2,10,20,28", help="layers whose searches are compared")
    parser.add_argument("--settings", default="32:64,16:128,32:128,64:64",
                        help="page_size:probe_pages, comma-separated")
    parser.add_argument("--out", default="cluster_recall.json")
    args = parser.parse_args()

    import memlm
    from memlm.backbone import load_backbone
    from memlm.registry import make_config

    device = torch.device(args.device)
    segment = args.segment or (1024 if device.type == "cuda" else 512)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_backbone(args.backbone, device=device, dtype=dtype)
    tokens, source = token_stream(tokenizer, args.stored + segment)
    config = make_config("knn-joint", backend_options={"dtype": "bfloat16", "search": "exact"})
    memory_model = memlm.MemoryModel(model, [config], tokenizer=tokenizer)
    memory = memory_model.memories["knn"]
    memory_model._begin_call()
    started = time.perf_counter()
    memory.reading = False
    for first in range(0, args.stored, segment):
        memory_model.write(tokens[:, first: first + segment].to(device))
    memory.reading = True
    print(f"stored {args.stored} tokens of {source} in {time.perf_counter() - started:.0f} s", flush=True)

    wanted = {int(layer) for layer in args.layers.split(",")}
    recorded = []
    original = MemoryGroup.search_positions

    def recording(group, queries, k, limit=None):
        layer = next((key[2] for key, value in memory.store.groups.items() if value is group), None)
        if layer in wanted:
            recorded.append((layer, group, queries.clone(), k, limit))
        return original(group, queries, k, limit)

    MemoryGroup.search_positions = recording
    try:
        with torch.no_grad():
            memory_model(tokens[:, args.stored: args.stored + segment].to(device))
    finally:
        MemoryGroup.search_positions = original

    results = {"device": str(device), "host": platform.node(), "stored_tokens": args.stored, "segment": segment,
               "text": source, "layers": sorted(wanted), "settings": []}
    for setting in args.settings.split(","):
        page_size, probe_pages = (int(part) for part in setting.split(":"))
        search = ClusterSearch(page_size=page_size, probe_pages=probe_pages, exact_below=1, min_queries=1)
        hits = total = 0
        mass = []
        for _layer, group, queries, k, limit in recorded:
            limit = len(group) if limit is None else limit
            exact = original(group, queries, k, limit)
            scores, positions = cluster_search(ClusterIndex(search), group._keys._data, group.keys,
                                               queries.to(group.keys.dtype), k, limit, group._exact_search)
            found = torch.zeros_like(exact.positions, dtype=torch.bool)
            for column in range(positions.shape[-1]):
                found |= exact.positions == positions[..., column: column + 1]
            hits += int(found.sum())
            total += found.numel()
            weights = torch.softmax(exact.scores * queries.shape[-1] ** -0.5, dim=-1)
            mass.append(float((weights * found).sum(-1).mean()))
        row = {"page_size": page_size, "probe_pages": probe_pages,
               "candidates_per_query": page_size * probe_pages, "recall_at_k": hits / total,
               "attention_mass_recovered": sum(mass) / len(mass)}
        results["settings"].append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
