"""knn-joint at scale: memorize and decode speed against the bare model, and exact-search bandwidth.

Everything is measured in one process, bare and memory interleaved on the same segments, so the
ratios hold on a noisy machine. For each index backend (`--backends`, default `torch:clusters,torch:exact`:

* memorize: segment by segment, the bare forward and the knn-joint write pass (which reads memory,
  then writes) over the same segment, each timed with a device sync; total and ms/segment as the
  store grows. Up to `--memorize-max` stored tokens every segment is memorized for real; beyond it
  the store is filled by write-only passes (`KnnMemory.reading = False`: the bare forward's keys
  are stored) and the last `--probes` segments before each checkpoint (every doubling and every
  size) are memorized and timed for real, so 1M stored tokens fit in the time budget;
* decode: greedy tokens/s, bare vs knn-joint (`write_memory=False`), with each size stored;
* exact search: the store's own search at one decode step (3 KV heads × N × 64 per layer) and a
  synthetic 1M × 576 bf16 index (one query), as bytes of keys read per second, against a device
  copy of a buffer the size of those keys (bytes read + written per second) measured in this run.

GPU (no FAISS there: the torch backend; `$MEMLM_GGUF` names the model):

    python3 benchmarks/knn_speed.py --device cuda --dtype bfloat16 --sizes 65536,262144,1048576 \\
        --out knn_speed_h200.json

knn-joint (exact, matrix product), the same with the fused kernel, and `knn-fast`, in one run and one plot:

    python3 benchmarks/knn_speed.py --device cuda --dtype bfloat16 --sizes 65536,262144,1048576 \\
        --backends torch:exact,torch:fused,knn-fast@ --out knn_fast_h100.json

CPU (2 cores):

    python benchmarks/knn_speed.py --device cpu --sizes 16384 --segment 512 --out knn_speed_cpu.json

The JSON holds every number; `--plot PNG` (default: beside `--out`) draws ms/segment against stored
tokens, one line per backend plus the bare model; `--plot-only JSON` redraws from a saved run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

PROMPT = "Memory lets a language model keep what it learned in earlier turns. In this essay we"


# --- timing ------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call, the device drained before and after."""
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def median_time(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        timings = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            timings.append(start.elapsed_time(end) / 1000)
        return statistics.median(timings)
    return statistics.median(timed(fn, device) for _ in range(repeats))


# --- bandwidth ---------------------------------------------------------------------------------

def copy_bandwidth(device: torch.device, size_bytes: int, repeats: int) -> float:
    """Bytes read + written per second by a device-to-device copy of `size_bytes`."""
    source = torch.empty(size_bytes // 2, device=device, dtype=torch.bfloat16).normal_()
    target = torch.empty_like(source)
    seconds = median_time(lambda: target.copy_(source), device, repeats)
    return 2 * size_bytes / seconds


def synthetic_search(device: torch.device, size: int, width: int, k: int, repeats: int,
                     copy_bps: float) -> dict[str, Any]:
    """memlm's exact search (`MemoryGroup.search_positions`) over size × width bf16 keys, one query."""
    from memlm.store import GroupSpec, StoreLayout
    from memlm.store.group import MemoryGroup

    layout = StoreLayout({"lm": GroupSpec(1, width, None, "ip")}, "torch", {"dtype": "bfloat16"})
    group = MemoryGroup(layout.specs["lm"], layout, device, torch.bfloat16)
    step = 1 << 18
    for first in range(0, size, step):  # filled in slices: no size × width float32 temporary
        count = min(step, size - first)
        keys = torch.randn(1, count, width, device=device, dtype=torch.bfloat16)
        ids = torch.arange(first + 1, first + count + 1, device=device)
        group.add(ids, keys, torch.zeros(count, dtype=torch.int64, device=device),
                  torch.zeros(count, 2, dtype=torch.int64), heads_first=True)
    query = torch.randn(1, 1, width, device=device, dtype=torch.bfloat16)
    key_bytes = size * width * 2
    seconds = median_time(lambda: group.search_positions(query, k), device, repeats)
    raw = median_time(lambda: (query[0] @ group.keys[0].T).topk(k), device, repeats)
    return {"size": size, "width": width, "k": k, "key_bytes": key_bytes, "ms": seconds * 1e3,
            "key_read_GBps": key_bytes / seconds / 1e9, "fraction_of_copy": key_bytes / seconds / copy_bps,
            "raw_matmul_topk_ms": raw * 1e3, "raw_fraction_of_copy": key_bytes / raw / copy_bps}


def store_search(memory: Any, device: torch.device, repeats: int, copy_bps: float) -> dict[str, Any] | None:
    """One decode step's search of one layer of the real store: (KV heads, query heads per KV head, 64)
    queries over that layer's keys."""
    group = memory.store.group("attention", 0, memory.attention_layers[0]) if memory.store else None
    if group is None:
        return None
    heads, items, dim = group.keys.shape
    queries = torch.randn(heads, memory.num_heads // memory.num_kv_heads, dim, device=device, dtype=group.keys.dtype)
    key_bytes = group.keys.numel() * group.keys.element_size()
    seconds = median_time(lambda: group.search_positions(queries, memory.config.top_k), device, repeats)
    return {"items": items, "kv_heads": heads, "dim": dim, "key_bytes": key_bytes, "ms": seconds * 1e3,
            "key_read_GBps": key_bytes / seconds / 1e9, "fraction_of_copy": key_bytes / seconds / copy_bps,
            "all_layers_ms": seconds * 1e3 * len(memory.attention_layers)}


# --- data --------------------------------------------------------------------------------------

def token_stream(tokenizer: Any, count: int) -> tuple[torch.Tensor, str]:
    """`count` token ids of real text (repeated if needed), else seeded random ids."""
    from memlm.data import corpora

    text, source = None, "random token ids"
    for name, load in (("pg-essays", lambda: "\n\n".join(corpora.pg_essays().values())),
                       ("gutenberg", lambda: "\n\n".join(corpora.gutenberg_texts().values()))):
        try:
            text, source = load(), name
            break
        except Exception:  # noqa: BLE001 - a corpus missing on this host: try the next
            continue
    if text:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    else:
        ids = torch.randint(100, 20000, (65536,), generator=torch.Generator().manual_seed(0))
    return ids.repeat(count // ids.shape[0] + 1)[:count].unsqueeze(0), source


# --- the run -----------------------------------------------------------------------------------

def checkpoints(segment: int, sizes: list[int]) -> list[int]:
    points, point = set(sizes), 4 * segment
    while point < max(sizes):
        points.add(point)
        point *= 2
    return sorted(points)


def run_backend(backend: str, model: Any, tokenizer: Any, tokens: torch.Tensor, args: argparse.Namespace,
                device: torch.device, copy_bps: float, deadline: float, write_out,
                result: dict[str, Any]) -> dict[str, Any]:
    """Time one backend, filling `result` (already in the written results, so each finished size is on
    disk even if the command is cut by a time limit)."""
    import memlm
    from memlm.registry import make_config

    # "torch:exact" / "torch:clusters" pick the torch backend's search mode; "torch:clusters:32:128" also
    # sets page_size:probe_pages, so several settings can be timed side by side; "torch:fused" is exact
    # search by the fused Triton kernel. "<preset>@<backend>" times another preset (e.g. knn-fast@torch),
    # "<preset>@" that preset as shipped.
    label = backend  # as given, for the log ("knn-fast@" names the preset as shipped)
    preset, _, backend = backend.rpartition("@")
    preset = preset or args.memory
    name, _, mode = backend.partition(":")
    search, _, setting = mode.partition(":")
    config = make_config(preset, **({"backend": name} if name else {}))
    if search:
        options = {**config.backend_options, "search": search}
        if search == "fused":
            options |= {"search": "exact", "kernel": "triton"}
        if setting:
            page_size, probe_pages = (int(part) for part in setting.split(":"))
            options |= {"page_size": page_size, "probe_pages": probe_pages}
        config = make_config(preset, backend=name, backend_options=options)
    memory_model = memlm.MemoryModel(model, [config], tokenizer=tokenizer)
    memory = memory_model.memories["knn"]
    encoded = tokenizer(PROMPT, return_tensors="pt").to(device)
    result.update({"config": config.to_dict() if hasattr(config, "to_dict") else str(config),
                   "curve": [], "sizes": {}, "complete": True})
    segment, stored, index = args.segment, 0, 0
    marks = checkpoints(segment, args.sizes)
    real_bare = real_memory = 0.0  # over every really memorized segment so far
    memory_model._begin_call()  # one stream, as memorize() makes it

    def segment_ids() -> torch.Tensor:
        return tokens[:, index * segment: (index + 1) * segment].to(device)

    def timed_pair(ids: torch.Tensor) -> tuple[float, float]:
        with memory_model.paused() as backbone, torch.no_grad():
            bare = timed(lambda: backbone(input_ids=ids, use_cache=False), device)
        return bare, timed(lambda: memory_model.write(ids), device)

    started = time.perf_counter()
    for size in args.sizes:
        while stored < size:
            if time.perf_counter() > deadline:
                result["complete"] = False
                print(f"[{label}] time budget spent at {stored} stored tokens", flush=True)
                return result
            ids = segment_ids()
            # every segment up to memorize_max; beyond, the last `probes` before each checkpoint
            real = stored < args.memorize_max or any(0 < mark - stored <= args.probes * segment for mark in marks)
            if real:
                bare, with_memory = timed_pair(ids)
                result["curve"].append({"stored": stored, "bare_ms": bare * 1e3, "memory_ms": with_memory * 1e3,
                                        "real_memorize": stored < args.memorize_max})
                if stored < args.memorize_max:
                    real_bare, real_memory = real_bare + bare, real_memory + with_memory
            elif args.fill == "random":
                random_fill(memory, ids)
            else:
                memory.reading = False
                memory_model.write(ids)
                memory.reading = True
            index, stored = index + 1, stored + segment
            if index % 16 == 0 or real and stored >= args.memorize_max:
                last = result["curve"][-1] if result["curve"] else None
                print(f"[{label}] stored {stored:>8} tokens, {time.perf_counter() - started:6.1f} s"
                      + (f"; last timed segment: bare {last['bare_ms']:.1f} ms, knn {last['memory_ms']:.1f} ms"
                         if last else ""), flush=True)
                write_out()  # the curve so far survives a cut
        # at this size: memorize summary, decode, the store's search
        entry: dict[str, Any] = {"stored_tokens": stored, "vectors": len(memory.store) if memory.store else 0}
        if stored <= args.memorize_max:
            entry["memorize"] = {"mode": "every segment from an empty store", "segments": stored // segment,
                                 "bare_s": real_bare, "memory_s": real_memory, "ratio": real_memory / real_bare}
        near = [point for point in result["curve"] if 0 < size - point["stored"] <= args.probes * segment]
        if near:
            entry["segments_at_size"] = {
                "segments": len(near), "bare_ms": statistics.median(p["bare_ms"] for p in near),
                "memory_ms": statistics.median(p["memory_ms"] for p in near),
                "ratio": statistics.median(p["memory_ms"] / p["bare_ms"] for p in near)}
        entry["decode"] = decode(memory_model, memory, encoded, args, device)
        try:
            entry["store_search"] = store_search(memory, device, args.search_repeats, copy_bps)
        except Exception as error:  # noqa: BLE001 - a store without batched search (an older memlm)
            entry["store_search"] = {"error": repr(error)}
        result["sizes"][str(size)] = entry
        print(f"[{label}] {size} stored: " + json.dumps({key: entry.get(key) for key in
                                                           ("memorize", "segments_at_size", "decode")}), flush=True)
        write_out()
    memory_model.detach()
    return result


def random_fill(memory: Any, ids: torch.Tensor) -> None:
    """Store one segment's worth of random keys and values at every attention layer, without a
    forward pass: exact search costs the same whatever the keys hold, so decode timings with a
    randomly filled store equal those with real text (`--fill random`, for slow machines)."""
    from memlm.memories.knn import KnnRecords

    store = memory._ensure_store()
    count, start = ids.shape[1], memory._positions.get(0, 0)
    device, dtype = memory._device, memory._dtype
    shape = (memory.num_kv_heads, count, memory.head_dim)
    keys = [torch.randn(shape, device=device, dtype=dtype) for _ in memory.attention_layers]
    values = [torch.cat([key, torch.randn(shape, device=device, dtype=dtype)], dim=-1) for key in keys]
    records = KnnRecords(ids[0].clone(), start, 1, False, None, None, memory.sequence, None)
    store.add("attention", 0, memory.attention_layers, keys, values, records, heads_first=True)
    memory._positions[0] = start + count


def decode(memory_model: Any, memory: Any, encoded: Any, args: argparse.Namespace, device: torch.device) -> dict:
    new_tokens = args.new_tokens
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    stream = (memory.sequence, dict(memory._positions))  # generate() starts a new stream: put this one back after

    def bare() -> float:
        with memory_model.paused() as backbone:
            return new_tokens / timed(lambda: backbone.generate(**encoded, **options), device)

    def with_memory() -> float:
        return new_tokens / timed(lambda: memory_model.generate(**encoded, write_memory=False, **options), device)

    bare(), with_memory()  # warm-up
    bares, memories = [], []
    for _ in range(args.repeats):
        bares.append(bare())
        memories.append(with_memory())
    memory.sequence, memory._positions = stream
    return {"new_tokens": new_tokens, "repeats": args.repeats, "bare_tokens_per_s": statistics.median(bares),
            "memory_tokens_per_s": statistics.median(memories),
            "ratio": statistics.median(m / b for m, b in zip(memories, bares, strict=True))}


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """ms per memorized segment against stored tokens: the bare model and one line per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plot (redraw later with --plot-only)", file=sys.stderr)
        return None
    figure, axis = plt.subplots(figsize=(7, 4.2))
    bare_points: dict[int, list[float]] = {}
    for backend, run in results["backends"].items():
        curve = run["curve"]
        if not curve:
            continue
        axis.plot([p["stored"] for p in curve], [p["memory_ms"] for p in curve], marker=".", markersize=3,
                  linewidth=1, label=(backend[:-1] if backend.endswith("@") else backend) if "@" in backend
                  else f"knn-joint ({backend})")
        for point in curve:
            bare_points.setdefault(point["stored"], []).append(point["bare_ms"])
    if bare_points:
        stored = sorted(bare_points)
        axis.plot(stored, [statistics.median(bare_points[s]) for s in stored], color="black", linewidth=1,
                  label="bare model")
    axis.set_xscale("symlog", linthresh=results["segment"])
    axis.set_yscale("log")
    axis.set_xlabel("stored tokens")
    axis.set_ylabel(f"ms per {results['segment']}-token segment")
    axis.set_title(f"memorize, {results['device_name']}, {results['dtype']}", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: $MEMLM_GGUF, else the packaged SmolLM2-135M")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--memory", default="knn-joint")
    parser.add_argument("--backends", default="torch:clusters,torch:exact",
                        help="comma-separated index backends; torch:clusters / torch:exact pick the torch search mode")
    parser.add_argument("--sizes", default="65536,262144,1048576", help="stored tokens, comma-separated")
    parser.add_argument("--segment", type=int, default=None, help="tokens per segment (1024 on cuda, 512 on cpu)")
    parser.add_argument("--memorize-max", type=int, default=None,
                        help="memorize every segment up to this many stored tokens (cuda: 262144; cpu: all)")
    parser.add_argument("--probes", type=int, default=4, help="timed segments at each checkpoint beyond it")
    parser.add_argument("--fill", choices=("forward", "random"), default="forward",
                        help="beyond --memorize-max: store the bare forward's keys, or random keys (no forward)")
    parser.add_argument("--new-tokens", type=int, default=None, help="decode length (64 on cuda, 32 on cpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search-size", type=int, default=None, help="synthetic index size (cuda: 1M; cpu: 256K)")
    parser.add_argument("--search-repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; phases past it are skipped")
    parser.add_argument("--out", default="knn_speed.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--plot-only", default=None, help="redraw the plot from this JSON and exit")
    args = parser.parse_args()
    if args.plot_only:
        results = json.loads(Path(args.plot_only).read_text())
        print(plot(results, Path(args.plot or Path(args.plot_only).with_suffix(".png"))))
        return

    import memlm

    began = time.perf_counter()
    deadline = began + args.budget
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.sizes = sorted(int(size) for size in args.sizes.split(","))
    args.segment = args.segment or (1024 if cuda else 512)
    args.memorize_max = args.memorize_max if args.memorize_max is not None else (262144 if cuda else max(args.sizes))
    args.new_tokens = args.new_tokens or (64 if cuda else 32)
    args.search_size = args.search_size or (1 << 20 if cuda else 1 << 18)
    out, plot_path = Path(args.out), Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)

    model, tokenizer = memlm.load_backbone(args.backbone, device=args.device, dtype=args.dtype, progress=False)
    model.eval()
    torch.set_grad_enabled(False)
    results: dict[str, Any] = {
        "command": " ".join(sys.argv), "backbone": model.config.name_or_path, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "dtype": str(model.dtype).replace("torch.", ""), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "segment": args.segment, "sizes": args.sizes,
        "memorize_max": args.memorize_max, "backends": {},
    }

    def write_out() -> None:
        results["elapsed_s"] = time.perf_counter() - began
        out.write_text(json.dumps(results, indent=2))

    tokens, source = token_stream(tokenizer, max(args.sizes) + (args.probes + 2) * args.segment
                                  * (len(checkpoints(args.segment, args.sizes)) + 1))
    results["text"] = source
    print(f"{results['backbone']} on {results['device_name']} ({results['dtype']}), segments of {args.segment} "
          f"tokens of {source}", flush=True)

    copy_bytes = min(2 * args.search_size * 576, 1 << 31)
    copy_bps = copy_bandwidth(device, copy_bytes, 20 if cuda else 5)
    results["copy_bandwidth_GBps"] = copy_bps / 1e9
    results["copy_bytes"] = copy_bytes
    print(f"copy bandwidth {copy_bps / 1e9:.0f} GB/s (read + write, {copy_bytes / 1e9:.2f} GB)", flush=True)
    try:
        results["synthetic_search"] = synthetic_search(device, args.search_size, 576, 32, args.search_repeats,
                                                       copy_bps)
    except Exception as error:  # noqa: BLE001 - an older memlm: the rest still runs
        results["synthetic_search"] = {"error": repr(error)}
    print("synthetic search: " + json.dumps(results["synthetic_search"]), flush=True)
    if cuda:
        torch.cuda.empty_cache()
    write_out()

    for backend in args.backends.split(","):
        results["backends"][backend] = {}
        run_backend(backend, model, tokenizer, tokens, args, device, copy_bps, deadline, write_out,
                    results["backends"][backend])
        write_out()
        if cuda:
            results.setdefault("max_memory_GB", {})[backend] = torch.cuda.max_memory_allocated(device) / 1e9
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    write_out()
    print(f"wrote {out}" + (f" and {drawn}" if (drawn := plot(results, plot_path)) else "")
          + f" in {results['elapsed_s']:.0f} s", flush=True)
    summary(results)


def summary(results: dict[str, Any]) -> None:
    for backend, run in results["backends"].items():
        for size, entry in run.get("sizes", {}).items():
            memorize = entry.get("memorize") or {}
            at_size = entry.get("segments_at_size") or {}
            decoding = entry.get("decode") or {}
            search = entry.get("store_search") or {}
            search = search if "ms" in search else {}
            print(f"{backend:>10} {int(size):>8}: memorize ratio {memorize.get('ratio', math.nan):5.2f} "
                  f"(segments at this size {at_size.get('ratio', math.nan):5.2f}), decode ratio "
                  f"{decoding.get('ratio', math.nan):5.2f}, layer search {search.get('ms', math.nan):.3f} ms "
                  f"= {search.get('fraction_of_copy', math.nan):.0%} of copy bandwidth")


if __name__ == "__main__":
    main()
