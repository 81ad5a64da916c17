"""Which layers carry knn-joint's perplexity gain: kNN attention at one layer at a time, at the best few, and
at every layer with one search shared by consecutive layers (`search_every`).

Long-document perplexity (`memlm.eval.perplexity.compare_perplexity`, the code behind `memlm eval ppl`)
of the same tokens with no memory, with `knn-joint` as shipped (every layer), with kNN attention at each
single layer (`--layers`, default all), and at the `--top` best single layers together (each count in
`--top`), and at every layer with `search_every` in `--search-every` (the first of each run of layers
searches, the others read its items). Gain = baseline perplexity - variant perplexity; "share" = a
variant's gain / knn-joint's. The `knn-fast` preset comes from this measurement (docs/benchmarks.md).

    python benchmarks/knn_layers.py --corpus pg-essays --window 512 --max-tokens 8192 --out knn_layers_cpu.json
    python3 benchmarks/knn_layers.py --device cuda --dtype bfloat16 --corpus pg-essays --window 1024 \\
        --max-tokens 65536 --out knn_layers_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--corpus", default="pg-essays")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--layers", default="all", help="single layers to measure: 'all', 'none' or comma-separated")
    parser.add_argument("--search-every", default="2,3,5,10,30", help="search_every values ('' for none)")
    parser.add_argument("--top", default="2,3,4", help="sizes of the best-layer sets measured together")
    parser.add_argument("--out", default="knn_layers.json")
    args = parser.parse_args()

    import memlm
    from memlm.data import load_corpus
    from memlm.eval.perplexity import compare_perplexity
    from memlm.registry import make_config

    started = time.time()
    backbone, tokenizer = memlm.load_backbone(args.backbone, device=args.device, dtype=args.dtype, progress=False)
    layer_count = backbone.config.get_text_config().num_hidden_layers
    named = {"all": list(range(layer_count)), "none": []}
    layers = named[args.layers] if args.layers in named else [int(part) for part in args.layers.split(",")]
    text = load_corpus(args.corpus)

    def measure(variants: dict[str, list]) -> dict:
        return compare_perplexity(backbone, tokenizer, text, args.window, variants, max_tokens=args.max_tokens,
                                  progress=False)

    variants = {"knn-joint": [make_config("knn-joint")]}
    variants |= {f"layer {layer}": [make_config("knn-joint", layers=[layer])] for layer in layers}
    first = measure(variants)
    baseline = first["baseline_ppl"]
    full_gain = baseline - first["results"]["knn-joint"]["perplexity"]
    single = {layer: baseline - first["results"][f"layer {layer}"]["perplexity"] for layer in layers}
    ranked = sorted(single, key=single.get, reverse=True)
    sets = {f"best {count}: {sorted(ranked[:count])}": [make_config("knn-joint", layers=sorted(ranked[:count]))]
            for count in (int(part) for part in args.top.split(",")) if ranked}
    sets |= {f"every layer, search_every={every}": [make_config("knn-joint", search_every=every)]
             for every in (int(part) for part in args.search_every.split(",") if part)}
    second = measure(sets)
    rows = [{"variant": name, "perplexity": result["perplexity"],
             "gain": baseline - result["perplexity"],
             "share_of_knn_joint_gain": (baseline - result["perplexity"]) / full_gain if full_gain else None}
            for name, result in [*first["results"].items(), *second["results"].items()] if name != "baseline"]
    result = {"benchmark": "knn_layers", "corpus": args.corpus, "window": args.window, "tokens": first["tokens"],
              "device": args.device, "dtype": args.dtype, "host": platform.node(), "baseline_ppl": baseline,
              "knn_joint_gain": full_gain, "ranked_layers": ranked, "rows": rows,
              "seconds": round(time.time() - started, 1)}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"baseline {baseline:.3f}; knn-joint (all layers) gain {full_gain:.3f}")
    for row in rows:
        share = row["share_of_knn_joint_gain"]
        print(f"{row['variant']:<40} ppl {row['perplexity']:8.3f}  gain {row['gain']:7.3f}  "
              f"share {share if share is None else round(share, 3)}")


if __name__ == "__main__":
    main()
