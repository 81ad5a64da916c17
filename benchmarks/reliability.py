"""The reliability campaign at full scale (docs/reliability.md):

    python benchmarks/reliability.py --kills 200 --fuzz 10000 --users 32      # or: make reliability

* crashes: `--kills` SIGKILLs per writer (fact store, KV store, save_state, chat transcript), each
  followed by reopen + consistency check + every acknowledged write present; plus `--copies` copies
  of each writer's files taken mid-write, each of which must open;
* concurrency: `--users` users (half threads sharing one Memory, half processes) for `--seconds`;
* hostile input: tests/reliability/test_hostile.py with `--fuzz` examples per target (hypothesis);
* environment and isolation: tests/reliability/test_environment.py and test_isolation.py.

Prints one JSON report and writes it to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from campaign import WRITERS, Zygote, concurrency_campaign, crash_campaign, power_loss_campaign  # noqa: E402


def pytest_run(paths: list[str], env: dict[str, str]) -> dict[str, object]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail)}
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"summary": tail, **counts, "failures": failed[:20], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", default=",".join(WRITERS))
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: crash,concurrency,hostile,environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "reliability.json")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, object] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="memlm-reliability-") as scratch:
        scratch = Path(scratch)
        if "crash" not in skip:
            zygote = Zygote()
            crashes, copies = [], []
            try:
                for writer in args.writers.split(","):
                    started = time.perf_counter()
                    result = crash_campaign(writer, scratch / f"crash-{writer}", args.kills, args.seed,
                                            zygote).to_dict()
                    result["seconds"] = round(time.perf_counter() - started, 1)
                    crashes.append(result)
                    print(json.dumps(result), flush=True)
                    copy = power_loss_campaign(writer, scratch / f"copies-{writer}", args.copies, args.seed, zygote)
                    copies.append(copy)
                    print(json.dumps(copy), flush=True)
            finally:
                zygote.close()
            report["crashes"], report["power_loss_copies"] = crashes, copies
        if "concurrency" not in skip:
            result = concurrency_campaign(scratch / "concurrency.sqlite", args.users, args.seconds, seed=args.seed)
            result["examples"] = result["examples"][:10]
            report["concurrency"] = result
            print(json.dumps(result), flush=True)
        if "hostile" not in skip:
            report["hostile"] = {"examples_per_target": args.fuzz,
                                 **pytest_run(["tests/reliability/test_hostile.py"], {"MEMLM_FUZZ": str(args.fuzz)})}
            print(json.dumps(report["hostile"]), flush=True)
        if "environment" not in skip:
            report["environment_and_isolation"] = pytest_run(
                ["tests/reliability/test_environment.py", "tests/reliability/test_isolation.py",
                 "tests/reliability/test_defects.py"], {})
            print(json.dumps(report["environment_and_isolation"]), flush=True)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
