"""How much one fact moves what the `recurrent` memory writes: the measured reason a mean-pooled write
cannot carry a BABILong fact across a long haystack.

The recurrent memory updates its state once per segment from the *mean* of the segment's final hidden
states. A fact sentence of ~8 tokens in a 1,024-token segment moves that mean by a small step, while
the haystack itself moves it much more from one segment to the next. This script measures both on the
real backbone, on CPU:

* signal: |mean(segment with the fact) - mean(the same segment without it)|, per segment;
* noise: |mean(segment i) - mean(segment j)| between different haystack segments;
* undiluted: |mean(the fact's own tokens) - mean(segment without it)|, what the fact would write if the
  write could look at it alone (as the slots' attention or the importance memory's selection can).

    python benchmarks/recurrent_write_signal.py [--segments 12] [--json out.json]

Results: docs/train.md ("What crosses segments").
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--length", type=int, default=1024, help="tokens per segment")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import memlm
    from memlm.data import babilong
    from memlm.data.cast import Recast
    from memlm.data.corpora import load_corpus

    model, tokenizer = memlm.load_backbone(dtype="float32")
    model.eval()
    haystack = tokenizer(load_corpus("pg-essays"), add_special_tokens=False).input_ids
    stories = babilong.generate("qa1", n=args.segments, length=0, seed=7, count_tokens=lambda text: len(text.split()),
                                transform=Recast("unseen", rephrase=True))
    rng = random.Random(0)

    @torch.no_grad()
    def hidden(ids: list[int]) -> torch.Tensor:  # final normed hidden states, (T, C): what the write reads
        return model.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()

    rows, plain_means = [], []
    stride = (len(haystack) - args.length) // args.segments
    for index, story in enumerate(stories):
        segment = haystack[index * stride:index * stride + args.length]
        fact = " " + story.facts[-1].strip() + " "
        fact_ids = tokenizer(fact, add_special_tokens=False).input_ids
        at = rng.randrange(0, args.length - len(fact_ids))
        with_fact = (segment[:at] + fact_ids + segment[at:])[:args.length]
        plain, told = hidden(segment), hidden(with_fact)
        plain_mean = plain.mean(0)
        plain_means.append(plain_mean)
        rows.append({"fact": fact.strip(), "fact_tokens": len(fact_ids),
                     "signal": float((told.mean(0) - plain_mean).norm()),
                     "undiluted": float((told[at:at + len(fact_ids)].mean(0) - plain_mean).norm())})
        print(f"segment {index + 1}/{len(stories)}: signal {rows[-1]['signal']:.3f}  "
              f"undiluted {rows[-1]['undiluted']:.3f}  ({fact.strip()})", flush=True)
    noise = [float((a - b).norm()) for a, b in itertools.combinations(plain_means, 2)]
    summary = {"segments": len(rows), "segment_tokens": args.length,
               "fact_tokens_mean": statistics.mean(r["fact_tokens"] for r in rows),
               "signal_mean": statistics.mean(r["signal"] for r in rows),
               "noise_mean": statistics.mean(noise),
               "undiluted_mean": statistics.mean(r["undiluted"] for r in rows)}
    summary["signal_to_noise"] = summary["signal_mean"] / summary["noise_mean"]
    summary["undiluted_to_noise"] = summary["undiluted_mean"] / summary["noise_mean"]
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"summary": summary, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
