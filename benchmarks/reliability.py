"""The reliability campaign at full scale (docs/reliability.md):

    python benchmarks/reliability.py --kills 200 --copies 50 --fuzz 10000 --users 32 --seconds 30  # make reliability

* crashes: `--kills` SIGKILLs per writer (fact store, KV store, save_state of `recurrent`, save_state
  of the file-backed `knn`, chat transcript, `memlm serve` under load), each followed by reopen +
  consistency check + every acknowledged write present; plus `--copies` copies of each writer's
  files taken mid-write, each of which must open;
* concurrency: `--users` users on one store (a third HTTP clients of a running `memlm serve`, a third
  processes, the rest threads sharing one Memory) for `--seconds`;
* hostile input: tests/reliability/test_hostile.py with `--fuzz` examples per target (hypothesis), and
  tests/reliability/atheris_fuzz.py with `--atheris-runs` (default `--fuzz`) inputs per file loader
  (atheris, coverage-guided);
* environment and isolation: tests/reliability/test_environment.py, test_isolation.py, test_defects.py.

Prints one JSON report and writes it to `--out`. `--skip` leaves parts out (to run a long campaign in
pieces, each with its own `--out`).
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

from campaign import (  # noqa: E402
    WRITERS,
    Zygote,
    concurrency_campaign,
    crash_campaign,
    power_loss_campaign,
)


def pytest_run(paths: list[str], env: dict[str, str], *options: str) -> dict[str, object]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, *paths],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    lines = [line for line in done.stdout.strip().splitlines() if re.search(r"\d+ (passed|failed)", line)]
    tail = lines[-1] if lines else done.stderr[-500:]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail)}
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    result = {"summary": tail, **counts, "failures": failed[:20], "seconds": round(time.perf_counter() - started, 1)}
    if "--hypothesis-show-statistics" in options:  # examples each test really ran (generate phase)
        examples: dict[str, dict[str, int]] = {}
        for block in re.split(r"\n(?=\S+::test_)", done.stdout):
            name = re.match(r"(\S+::test_\w+)", block)
            if not name:
                continue
            counted = (r"during (\w+) phase.*?- (\d+) passing(?: examples?)?, (\d+) failing(?: examples?)?,"
                       r"(?: and)? (\d+) invalid")
            for _phase, passing, failing, invalid in re.findall(counted, block, re.S):
                entry = examples.setdefault(name.group(1).split("::")[-1], {"passing": 0, "failing": 0, "invalid": 0})
                entry["passing"] += int(passing)
                entry["failing"] += int(failing)
                entry["invalid"] += int(invalid)
            stopped = re.search(r"- Stopped because (.*)", block)
            if stopped and name.group(1).split("::")[-1] in examples:
                examples[name.group(1).split("::")[-1]]["stopped_because"] = stopped.group(1).strip()
        result["examples_run"] = examples
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--atheris-runs", type=int, default=None, help="atheris inputs per loader [--fuzz]")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--server-clients", type=int, default=None, help="of the users [a third]")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", default=",".join(WRITERS))
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: crash,concurrency,hostile,atheris,environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "reliability.json")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, object] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="memlm-reliability-") as scratch:
        scratch = Path(scratch)
        zygote = Zygote() if not {"crash", "concurrency"} <= skip else None
        if "crash" not in skip:
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
                report["crashes"], report["power_loss_copies"] = crashes, copies
        if "concurrency" not in skip:
            server_clients = args.users // 3 if args.server_clients is None else args.server_clients
            started = time.perf_counter()
            result = concurrency_campaign(scratch / "concurrency.sqlite", args.users, args.seconds, seed=args.seed,
                                          server_clients=server_clients, zygote=zygote)
            result["wall_s"] = round(time.perf_counter() - started, 1)
            result["examples"] = result["examples"][:10]
            report["concurrency"] = result
            print(json.dumps(result), flush=True)
        if zygote is not None:
            zygote.close()
        if "hostile" not in skip:
            report["hostile"] = {"examples_per_target": args.fuzz,
                                 **pytest_run(["tests/reliability/test_hostile.py"], {"MEMLM_FUZZ": str(args.fuzz)},
                                             "--hypothesis-show-statistics")}
            print(json.dumps(report["hostile"]), flush=True)
        if "atheris" not in skip:
            runs = args.atheris_runs or args.fuzz
            out = scratch / "atheris.json"
            started = time.perf_counter()
            fuzzer = ROOT / "tests" / "reliability" / "atheris_fuzz.py"
            subprocess.run([sys.executable, str(fuzzer), "--runs", str(runs), "--out", str(out)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                           capture_output=True, text=True)
            report["atheris"] = (json.loads(out.read_text()) if out.exists()
                                 else {"passed": False, "error": "atheris_fuzz.py wrote no report"})
            report["atheris"]["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(report["atheris"]), flush=True)
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
