"""Fast greedy decoding (`memlm.decode`) vs. transformers' eager loop, bare and with each memory.

Batch 1, greedy, a fixed number of new tokens (`min_new_tokens` = `max_new_tokens`), in one process:

* bare, eager (transformers' `generate`, dynamic cache): the baseline today;
* bare, static (static KV cache, the step run eagerly) and bare, graph (the step replayed as a CUDA graph);
* each memory (`recurrent`, `slots`, `importance`, `bank` with prompt fusion and its fact-token bonus;
  `--memories` adds others, e.g. `knn`, which falls back to eager), in the fast mode, its ratio to
  bare fast.

Every fast row's tokens are checked against eager `generate()` of the same configuration twice:
against transformers' loop on the same static cache (`cache_implementation="static"`: the same
kernels, so the tokens must be identical; a mismatch fails the run) and against the default dynamic
cache (reported: in bfloat16 a different attention kernel may flip a near-tie; the column says where).
Memories get non-zero gates (small random weights, fixed seed) and a written state, so their reads
change the output. Writes a CSV, a Markdown table and a JSON record to `--out`.

    python benchmarks/fast_decode.py --model /tmp/SmolLM2-135M-Instruct --out /tmp/decode   # CUDA, bf16
    python benchmarks/fast_decode.py --device cpu --tiny --out /tmp/decode-smoke            # a quick check
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import StaticCache

import memlm
import memlm.decode
from memlm.backbone import resolve_dtype
from memlm.decode import CACHE_BUCKET

PROMPT = "Memory lets a language model keep what it learned in earlier turns. In this essay we"
FACT = "The user's dog is called Biscuit."
TARGET_TOKENS_PER_S, TARGET_RATIO = 1000.0, 0.8


def tiny_backbone(device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A small random Llama and a byte tokenizer (the test suite's), for a smoke run without weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import tiny_model, tiny_tokenizer

    return tiny_model("llama", hidden_size=64, num_layers=4).to(device, dtype), tiny_tokenizer()


def build(backbone: Any, tokenizer: Any, name: str, seed: int) -> tuple[memlm.MemoryModel, dict[str, Any], Any]:
    """A memory model with `name` attached (none for "bare"), its prompt, and what to run before each call."""
    prepare = None
    if name == "bare":
        model = memlm.MemoryModel(backbone, [], tokenizer=tokenizer)
    elif name == "bank":
        model = memlm.attach(backbone, memlm.BankConfig(encoder="backbone", fusion="prompt"), tokenizer=tokenizer)
        model.memories["bank"].learn(FACT, importance=1.0)
        messages = [{"role": "user", "content": "What is my dog called? Tell me about him."}]

        def prepare() -> None:  # each generate() takes the bonus of the facts put in the prompt just before
            model.augment_messages(messages)

        fused, used = model.augment_messages(messages)
        assert used, "the bank retrieved nothing: no fact-token bonus to measure"
        ids = tokenizer.apply_chat_template(fused, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"].to(backbone.device)
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, prepare
    else:
        model = memlm.attach(backbone, name, tokenizer=tokenizer)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # small random weights: open gates, so the reads change the output
            for parameter in model.memory_parameters():
                parameter.copy_((torch.randn(parameter.shape, generator=generator) * 0.05).to(parameter.dtype))
    encoded = tokenizer(PROMPT, return_tensors="pt").to(backbone.device)
    if name not in ("bare", "bank"):
        model.write(encoded["input_ids"])  # a state, so decode steps really read it
        for memory in model.memories.values():
            if hasattr(memory, "add_tokens"):  # importance: every slot kept, every step reads them
                essay = tokenizer(PROMPT * 40, return_tensors="pt").input_ids.to(backbone.device)
                memory.add_tokens(essay[:, :memory.config.max_memory_size])
    return model, dict(encoded), prepare


def timed(model: memlm.MemoryModel, inputs: dict[str, Any], prepare: Any, decode: str, new_tokens: int,
          **options: Any) -> tuple[float, torch.Tensor]:
    if prepare is not None:
        prepare()
    if inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            write_memory=False, decode=decode, pad_token_id=model.tokenizer.pad_token_id, **options)
    if inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - started), output


def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape == b.shape and torch.equal(a, b):
        return "yes"
    length = min(a.shape[1], b.shape[1])
    different = (a[:, :length] != b[:, :length]).any(dim=0).nonzero()
    return f"no: from token {int(different[0]) if len(different) else length}"


def measure(backbone: Any, tokenizer: Any, name: str, modes: list[str], args: argparse.Namespace
            ) -> list[dict[str, Any]]:
    """One row per decode mode for `name`, each checked against eager `generate()` of the same setup."""
    model, inputs, prepare = build(backbone, tokenizer, name, args.seed)
    rows, outputs = [], {}
    try:
        for decode in modes:
            started = time.perf_counter()
            timed(model, inputs, prepare, decode, args.new_tokens)  # warm-up: compiles, records the graph
            warmup_s = time.perf_counter() - started
            seconds, prefill_seconds = [], []
            for _ in range(args.repeats):
                speed, outputs[decode] = timed(model, inputs, prepare, decode, args.new_tokens)
                seconds.append(args.new_tokens / speed)
                prefill_seconds.append(1 / timed(model, inputs, prepare, decode, 1)[0])  # the prompt's pass alone
            path = model.greedy_decoder.last_path if decode != "eager" else "eager"
            total, prefill = statistics.median(seconds), statistics.median(prefill_seconds)
            rows.append({"memory": name, "decode": decode, "path": path, "tokens_per_s": args.new_tokens / total,
                         "decode_tokens_per_s": (args.new_tokens - 1) / max(total - prefill, 1e-9),
                         "prefill_ms": 1000 * prefill, "warmup_s": warmup_s})
        eager_speed, dynamic = timed(model, inputs, prepare, "eager", args.new_tokens)
        # transformers' loop on a static cache of the fast path's length (kernels may depend on the length);
        # the longest session is the full calls' (the 1-token calls may have made a shorter one)
        length = max((length for _, length in model.greedy_decoder.sessions), default=CACHE_BUCKET)
        cache = StaticCache(config=backbone.config, max_cache_len=length)
        name_of_cache = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
        _, same_cache = timed(model, inputs, prepare, "eager", args.new_tokens, disable_compile=True,
                              **{name_of_cache: cache})
        for row in rows:
            row["eager_tokens_per_s"] = eager_speed
            if row["decode"] != "eager":
                row["same_as_eager_static_cache"] = first_difference(outputs[row["decode"]], same_cache)
                row["same_as_eager_dynamic_cache"] = first_difference(outputs[row["decode"]], dynamic)
        return rows
    finally:
        model.detach()


COLUMNS = ["memory", "decode", "path", "tokens_per_s", "decode_tokens_per_s", "ratio_to_bare", "speedup_vs_eager",
           "eager_tokens_per_s", "prefill_ms", "warmup_s", "same_as_eager_static_cache", "same_as_eager_dynamic_cache"]


def write_tables(rows: list[dict[str, Any]], record: dict[str, Any], out: Path) -> list[str]:
    """decode_speed.{csv,json,md} in `out` (rewritten after every memory, so a run cut short keeps its rows)."""
    bare = {row["decode"]: row.get("decode_tokens_per_s", float("nan")) for row in rows if row["memory"] == "bare"}
    for row in rows:
        row["ratio_to_bare"] = row.get("decode_tokens_per_s", float("nan")) / bare.get(row["decode"], float("nan"))
        row["speedup_vs_eager"] = row["tokens_per_s"] / row.get("eager_tokens_per_s", float("nan"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "decode_speed.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: row.get(key, "") for key in COLUMNS} for row in rows)
    (out / "decode_speed.json").write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")
    lines = [f"{record['model']} on {record['device']} ({record['dtype']}), batch 1, greedy, {record['new_tokens']} "
             f"new tokens, median of {record['repeats']}; torch {record['torch']}, transformers "
             f"{record['transformers']}", "",
             "| memory | decode | ran as | tokens/s (call) | tokens/s (decode) | ratio to bare (decode, same mode) "
             "| × eager (call) | prompt pass (ms) | first call (s) | = eager, static cache | = eager, dynamic cache |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    lines += [f"| {r['memory']} | {r['decode']} | {r['path']} | {r['tokens_per_s']:.1f} "
              f"| {r.get('decode_tokens_per_s', nan):.1f} | {r['ratio_to_bare']:.3f} | {r['speedup_vs_eager']:.1f} "
              f"| {r.get('prefill_ms', nan):.1f} | {r.get('warmup_s', nan):.1f} "
              f"| {r.get('same_as_eager_static_cache', '')} | {r.get('same_as_eager_dynamic_cache', '')} |"
              for r in rows]
    fast = [r for r in rows if r["decode"] not in ("eager", "static")] or [r for r in rows if r["decode"] == "static"]
    best = max((r for r in fast if r["memory"] == "bare"), key=lambda r: r.get("decode_tokens_per_s", 0),
               default=None)
    if best is not None:
        memories = [r for r in fast if r["memory"] != "bare" and r["decode"] == best["decode"]]
        rate = best.get("decode_tokens_per_s", 0)
        lines += ["", f"targets (decode tokens/s, the prompt's pass excluded; per call: {best['tokens_per_s']:.0f}): "
                  f"bare ≥ {TARGET_TOKENS_PER_S:.0f}: {'met' if rate >= TARGET_TOKENS_PER_S else 'NOT met'} "
                  f"({rate:.0f}, {best['decode']}); each memory ≥ {TARGET_RATIO} of it: "
                  + ", ".join(f"{r['memory']} {'met' if r['ratio_to_bare'] >= TARGET_RATIO else 'NOT met'}"
                              for r in memories)]
    (out / "decode_speed.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder, GGUF file or hub id (default: the embedded one)")
    parser.add_argument("--out", type=Path, required=True, help="folder for decode_speed.{csv,md,json}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--memories", default="recurrent,slots,importance,bank")
    parser.add_argument("--modes", default=None,
                        help="fast decode modes to time (default: graph,compile on CUDA, static on CPU)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a small random model instead of --model (smoke test)")
    parser.add_argument("--compile-mode", default=None,
                        help="inductor mode for decode=compile, e.g. max-autotune-no-cudagraphs (long compiles)")
    args = parser.parse_args()
    memlm.decode.COMPILE_MODE = args.compile_mode

    dtype = resolve_dtype(args.dtype, torch.device(args.device))
    if args.tiny:
        backbone, tokenizer = tiny_backbone(args.device, dtype)
    else:
        backbone, tokenizer = memlm.load_backbone(args.model, device=args.device, dtype=dtype)
    cuda = args.device.startswith("cuda")
    modes = args.modes.split(",") if args.modes else (["graph", "compile"] if cuda else ["static"])
    record = {"model": "tiny random llama" if args.tiny else str(getattr(backbone.config, "name_or_path", args.model)),
              "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "dtype": str(dtype).replace("torch.", ""), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "command": " ".join(sys.argv)}
    rows: list[dict[str, Any]] = []
    plan = [("bare", ["eager", *dict.fromkeys(["static", *modes])])]
    plan += [(name, modes) for name in args.memories.split(",") if name]
    for name, name_modes in plan:
        try:
            rows += measure(backbone, tokenizer, name, name_modes, args)
        except Exception as error:  # noqa: BLE001  (one memory failing should not hide the others' numbers)
            rows.append({"memory": name, "decode": ",".join(name_modes), "tokens_per_s": float("nan"),
                         "path": f"error: {type(error).__name__}: {error}", "same_as_eager_static_cache": "error"})
        for row in rows[-len(name_modes):]:
            print(json.dumps(row), flush=True)
        lines = write_tables(rows, record, args.out)
    print("\n".join(lines))
    wrong = [f"{r['memory']} ({r['decode']})" for r in rows
             if r["decode"] != "eager" and r.get("same_as_eager_static_cache") != "yes"]
    if wrong:
        print(f"tokens differ from eager on the same static cache: {wrong}")
        strict = [w for w in wrong if "(compile)" not in w]  # compiled kernels are not eager's: reported only
        if strict:
            sys.exit(1)


if __name__ == "__main__":
    main()
