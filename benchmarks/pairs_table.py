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
        print(f"{path.stem:80s} {cells}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
