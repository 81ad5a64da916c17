"""Re-test named mutants of a finished (or stopped) `tools/mutate.py` group against some tests, in one process.

mutmut's trampolines read MUTANT_UNDER_TEST at every call, so setting it between `pytest.main` calls runs
exactly the mutated code mutmut runs, without its per-mutant process and the group's whole selection: the
cheap way to show that tests written after a run kill its survivors. Run it from `.mutate/<group>/mutants`
after copying the new test files into `tests/` there:

    cd .mutate/store-kv-store/mutants && cp ../../../tests/store/test_kv_store.py tests/store/
    PYTHONPATH= python ../../../tools/mutant_retest.py names.txt retest.json -- tests/store/test_kv_store.py

A mutant that crashes the process (a FAISS index built on `None` segfaults) ends the run: run the same
command again and it resumes, recording that mutant as "crashed" (a kill: mutmut counts a segfault as one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.abspath("src"))

import pytest  # noqa: E402


def run(args: list[str], mutant: str) -> int:
    os.environ["MUTANT_UNDER_TEST"] = mutant
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        return int(pytest.main([*args, "-x", "-q", "-p", "no:cacheprovider"]))


def main() -> int:
    names_file, out, args = sys.argv[1], sys.argv[2], sys.argv[sys.argv.index("--") + 1:]
    if run(args, "") != 0:
        print("the tests fail without a mutant")
        return 1
    results: dict[str, str] = {}
    if os.path.exists(out):  # resume: what an earlier run of this command finished
        with open(out) as handle:
            results = json.load(handle)
    running = out + ".running"  # names the mutant under test while it runs: left behind by a crash
    if os.path.exists(running):
        with open(running) as handle:
            results[handle.read().strip()] = "crashed"
        with open(out, "w") as handle:
            json.dump(results, handle, indent=1)
    with open(names_file) as handle:
        names = [name for name in handle.read().split() if name not in results]
    for name in names:
        started = time.monotonic()
        with open(running, "w") as handle:
            handle.write(name)
        code = run(args, name)
        results[name] = "survived" if code == 0 else "killed" if code == 1 else f"exit {code}"
        print(f"{results[name]:9} {time.monotonic() - started:5.1f}s {name}", flush=True)
        with open(out, "w") as handle:
            json.dump(results, handle, indent=1)
    if os.path.exists(running):
        os.remove(running)
    os.environ["MUTANT_UNDER_TEST"] = ""
    return 0


if __name__ == "__main__":
    sys.exit(main())
