"""The fused exact top-k kernel (memlm.store.fused_topk) against the matrix product + top-k, on a GPU.

For each number of queries (`--queries`, default 1 and 64) over N keys (H heads x N x D, bf16): both
results compared (the same set of positions), time per search, and keys read per second as a share of
a device copy's bandwidth (bytes read + written per second) measured in the same run.

    python benchmarks/fused_topk_speed.py --items 1048576 --out fused_topk_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform

import torch


def timed(function, repeats: int) -> float:
    """Median milliseconds of `function()` over `repeats` calls, each between CUDA events."""
    function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1 << 20)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--queries", default="1,64,3072")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="fused_topk.json")
    args = parser.parse_args()

    from memlm.store.fused_topk import fused_topk
    from memlm.store.index import exact_topk

    torch.manual_seed(0)
    keys = torch.randn(args.heads, args.items, args.dim, device="cuda", dtype=torch.bfloat16)
    key_bytes = keys.numel() * keys.element_size()
    buffer = torch.empty_like(keys)
    copy_ms = timed(lambda: buffer.copy_(keys), args.repeats)
    copy_bandwidth = 2 * key_bytes / copy_ms / 1e6  # GB/s, read + write
    rows = []
    for count in (int(part) for part in args.queries.split(",")):
        queries = torch.randn(args.heads, count, args.dim, device="cuda", dtype=torch.bfloat16)
        fused_scores, fused_positions = fused_topk(queries, keys, args.k)
        checked = queries[:, :64]  # the reference in float32 (its bf16 product rounds the scores)
        exact_scores, exact_positions = exact_topk(checked.float() @ keys.float().mT, args.k)
        same = (fused_positions[:, :64].sort(-1).values == exact_positions.sort(-1).values).float().mean().item()
        score_gap = (fused_scores[:, :64] - exact_scores).abs().max().item()
        fused_ms = timed(lambda q=queries: fused_topk(q, keys, args.k), args.repeats)
        exact_ms = timed(lambda q=queries: exact_topk((q @ keys.mT).float(), args.k), args.repeats)
        row = {"queries": count, "fused_ms": round(fused_ms, 4), "matmul_topk_ms": round(exact_ms, 4),
               "speedup": round(exact_ms / fused_ms, 2), "same_positions": round(same, 5),
               "max_score_gap": round(score_gap, 4),
               "fused_keys_gb_s": round(key_bytes / fused_ms / 1e6, 1),
               "fused_share_of_copy": round(key_bytes / fused_ms / 1e6 / copy_bandwidth, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"benchmark": "fused_topk", "device": torch.cuda.get_device_name(), "host": platform.node(),
              "torch": torch.__version__, "items": args.items, "heads": args.heads, "dim": args.dim, "k": args.k,
              "copy_gb_s": round(copy_bandwidth, 1), "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps({"copy_gb_s": result["copy_gb_s"]}))


if __name__ == "__main__":
    main()
