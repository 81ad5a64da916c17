"""One line per cached evaluation pair (task x contender) under a `memlm eval --out` folder: each length's
value and sample count. Used by the GPU scripts to print what a run measured.

    python benchmarks/pairs_table.py /tmp/eval-round
"""

from __future__ import annotations

import json
import pathlib
import sys


def main(folder: str) -> None:
    for path in sorted(pathlib.Path(folder, "pairs").rglob("*.json")):
        pair = json.loads(path.read_text(encoding="utf-8"))
        cells = " ".join(f"{record.get('length')}:{record['value']:.3f}(n={record.get('n')})"
                         for record in pair.get("records", []))
        print(f"{path.stem:80s} {cells}{_in_memory(pair.get('details', []))}")


def _in_memory(details: list[dict]) -> str:
    """Per length, how often the answer was in the token memory when asked (misses split: forgotten or misread)."""
    counts: dict[int, list[int]] = {}
    for detail in details:
        if "answer_in_memory" in detail:
            held, total = counts.setdefault(detail["length"], [0, 0])
            counts[detail["length"]] = [held + bool(detail["answer_in_memory"]), total + 1]
    shares = " ".join(f"{length}:{held}/{total}" for length, (held, total) in sorted(counts.items()))
    return f"  answer in memory {shares}" if shares else ""


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
