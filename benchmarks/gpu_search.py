"""Exact torch search on a GPU, as a fraction of the device's own copy bandwidth.

Exact search over N keys reads the whole key matrix once per query batch: it is bound by memory
bandwidth. This script measures, in one run:

* the device-to-device copy bandwidth (bytes read + bytes written per second) of a buffer the size
  of the keys — the ceiling;
* `TorchIndex.search` (memlm's exact backend: matmul + top-k + id lookup) over N x width bf16 keys,
  for a few query batch sizes, as bytes of keys read per second and as a fraction of that ceiling.

    python benchmarks/gpu_search.py --size 1000000 --width 576
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from memlm.store import make_index


def cuda_time(fn, repeats: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        timings.append(start.elapsed_time(end) / 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda")
    keys = torch.randn(args.size, args.width, device=device, dtype=torch.bfloat16)
    key_bytes = keys.numel() * keys.element_size()

    target = torch.empty_like(keys)
    copy_seconds = cuda_time(lambda: target.copy_(keys))
    copy_bandwidth = 2 * key_bytes / copy_seconds  # read + write

    index = make_index("torch", args.width, "ip", device=device, dtype=torch.bfloat16)
    index.add(keys, torch.arange(args.size, device=device))
    rows = []
    for batch in (1, 8, 64):
        queries = torch.randn(batch, args.width, device=device, dtype=torch.bfloat16)
        seconds = cuda_time(lambda q=queries: index.search(q, args.k))
        raw = cuda_time(lambda q=queries: (q @ keys.T).topk(args.k, dim=-1))
        rows.append({
            "queries_per_batch": batch,
            "ms_per_batch": seconds * 1000,
            "key_read_bandwidth_GBps": key_bytes / seconds / 1e9,
            "fraction_of_copy_bandwidth": key_bytes / seconds / copy_bandwidth,
            "raw_matmul_topk_fraction": key_bytes / raw / copy_bandwidth,
        })
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "size": args.size, "width": args.width, "dtype": "bfloat16",
        "key_bytes": key_bytes, "copy_bandwidth_GBps": copy_bandwidth / 1e9, "search": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
