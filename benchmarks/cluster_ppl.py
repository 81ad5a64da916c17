"""What cluster search costs in perplexity: knn-joint with exact search against cluster-ordered pages.

Long-document perplexity (`memlm.eval.perplexity.compare_perplexity`, the code behind `memlm eval
ppl`) of the same tokens with no memory, knn-joint searching exactly, and knn-joint with page
search (memlm.store.clusters, as shipped: exact up to `exact_below` stored items, clusters beyond)
for each `--settings` entry.

    python benchmarks/cluster_ppl.py --corpus gutenberg/milton/areopagitica --window 256 --max-tokens 8192
    python3 benchmarks/cluster_ppl.py --device cuda --dtype bfloat16 --corpus pg-essays --window 1024 \\
        --max-tokens 131072 --out cluster_ppl_h200.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--corpus", default="gutenberg/milton/areopagitica")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--settings", default="default", help="'default' (the shipped search options) and/or "
                        "page_size:probe_pages entries, comma-separated")
    parser.add_argument("--out", default="cluster_ppl.json")
    args = parser.parse_args()

    import memlm
    from memlm.data import load_corpus
    from memlm.eval.perplexity import compare_perplexity
    from memlm.registry import make_config

    backbone, tokenizer = memlm.load_backbone(args.backbone, device=args.device, dtype=args.dtype, progress=False)
    variants = {"knn-joint exact": [make_config("knn-joint", backend_options={"dtype": "bfloat16",
                                                                            "search": "exact"})]}
    for setting in args.settings.split(","):
        options = {"dtype": "bfloat16", "search": "clusters"}
        if setting != "default":
            page_size, probe_pages = (int(part) for part in setting.split(":"))
            options |= {"page_size": page_size, "probe_pages": probe_pages}
        variants[f"knn-joint clusters {setting}"] = [make_config("knn-joint", backend_options=options)]
    result = compare_perplexity(backbone, tokenizer, load_corpus(args.corpus), args.window, variants,
                                max_tokens=args.max_tokens)
    result |= {"corpus": args.corpus, "device": args.device, "dtype": args.dtype, "host": platform.node()}
    exact = result["results"]["knn-joint exact"]["perplexity"]
    for label, entry in result["results"].items():
        entry["change_vs_exact"] = entry["perplexity"] / exact - 1
        print(f"{label:>28}: ppl {entry['perplexity']:8.3f}  vs exact {entry['change_vs_exact']:+.2%}  "
              f"({entry['seconds']:.0f} s)", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
