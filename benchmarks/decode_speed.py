"""Decode speed of the bare backbone vs. the same backbone with memories attached.

Both variants run in the same process, interleaved, on the same prompt, so the ratio is meaningful
even on a noisy machine. Two ratios are reported:

* decode: generation only (`write_memory=False`): the cost of reading memory at every step;
* turn:   generation plus the once-per-turn memory write (what a chat turn costs).

    python benchmarks/decode_speed.py                      # default model, recurrent, CPU
    python benchmarks/decode_speed.py --device cuda --dtype bfloat16 --repeats 10
    python benchmarks/decode_speed.py --memory knn --stored 100000      # 100K items in the knn store
    python benchmarks/decode_speed.py --memory importance --fill        # a full token-importance memory

With `--out DIR` it runs the fast-decoding table instead (benchmarks/fast_decode.py: static KV cache and
CUDA graphs vs. eager, bare and with each memory, checked token for token against eager):

    python benchmarks/decode_speed.py --model /tmp/SmolLM2-135M-Instruct --out /tmp/decode
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

import memlm


def timed_generate(model, encoded, new_tokens: int, **kwargs) -> float:
    if encoded["input_ids"].is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0, **kwargs)
    if encoded["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - started)


def main() -> None:
    if "--out" in sys.argv or any(argument.startswith("--out=") for argument in sys.argv):
        import fast_decode  # this folder is on sys.path when a script in it runs

        fast_decode.main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", "--model", default=None)
    parser.add_argument("--memory", default="recurrent", help="comma-separated mechanisms")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stored", type=int, default=0,
                        help="memorize this many tokens of Paul Graham essays first (e.g. 100000 for knn)")
    parser.add_argument("--fill", action="store_true",
                        help="fill token-keeping memories (importance) to max_memory_size before timing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    model, tokenizer = memlm.load_backbone(args.backbone, device=args.device, dtype=args.dtype)
    prompt = "Memory lets a language model keep what it learned in earlier turns. In this essay we"
    encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
    specs = [name for name in args.memory.split(",") if name]
    memory_model = memlm.MemoryModel(model, specs, tokenizer=tokenizer)
    if args.stored:
        from memlm.data.corpora import pg_essays

        ids = tokenizer("\n\n".join(pg_essays().values()), return_tensors="pt").input_ids
        ids = ids.repeat(1, args.stored // ids.shape[1] + 1)[:, : args.stored]
        memory_model.memorize(ids, segment_length=512, progress=True)
    else:
        memory_model.write(encoded["input_ids"])  # a non-empty state, so reads really run
    if args.fill:
        from memlm.data.corpora import pg_essays

        essay_ids = tokenizer(next(iter(pg_essays().values())), return_tensors="pt").input_ids.to(model.device)
        for memory in memory_model.memories.values():
            if hasattr(memory, "add_tokens"):  # the importance memory: every slot taken, the worst case
                memory.add_tokens(essay_ids[:, :memory.config.max_memory_size])
    stored = {name: memory.summary() for name, memory in memory_model.memories.items()}

    timed_generate(model, encoded, 8)  # warm-up
    bare, decode, turn = [], [], []
    for _ in range(args.repeats):
        with memory_model.paused() as backbone:
            bare.append(timed_generate(backbone, encoded, args.new_tokens))
        decode.append(timed_generate(memory_model, encoded, args.new_tokens, write_memory=False))
        turn.append(timed_generate(memory_model, encoded, args.new_tokens, write_memory=True))

    result = {
        "backbone": model.config.name_or_path,
        "memories": specs,
        "memory_state": stored,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "bare_tokens_per_s": statistics.median(bare),
        "memory_decode_tokens_per_s": statistics.median(decode),
        "memory_turn_tokens_per_s": statistics.median(turn),
        "decode_ratio": statistics.median(d / b for d, b in zip(decode, bare, strict=True)),
        "turn_ratio": statistics.median(t / b for t, b in zip(turn, bare, strict=True)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['backbone']} on {result['device']} ({result['dtype']}), {args.new_tokens} new tokens, "
          f"median of {args.repeats}:")
    print(f"  bare                      {result['bare_tokens_per_s']:8.1f} tokens/s")
    print(f"  + {','.join(specs):22s} {result['memory_decode_tokens_per_s']:8.1f} tokens/s  "
          f"decode ratio {result['decode_ratio']:.3f}")
    print(f"  + write once per turn     {result['memory_turn_tokens_per_s']:8.1f} tokens/s  "
          f"turn ratio   {result['turn_ratio']:.3f}")


if __name__ == "__main__":
    main()
