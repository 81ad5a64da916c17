"""Re-test named mutants of a finished (or stopped) `tools/mutate.py` group against some tests, in one process.

mutmut's trampolines read MUTANT_UNDER_TEST at every call, so setting it between `pytest.main` calls runs
exactly the mutated code mutmut runs, without its per-mutant process and the group's whole selection: the
cheap way to show that tests written after a run kill its survivors. Run it from `.mutate/<group>/mutants`
after copying the new test files into `tests/` there:

    cd .mutate/store-kv-store/mutants && cp ../../../tests/store/test_kv_store.py tests/store/
    PYTHONPATH= python ../../../tools/mutant_retest.py names.txt retest.json -- tests/store/test_kv_store.py
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
    with open(names_file) as handle:
        names = handle.read().split()
    for name in names:
        started = time.monotonic()
        code = run(args, name)
        results[name] = "survived" if code == 0 else "killed" if code == 1 else f"exit {code}"
        print(f"{results[name]:9} {time.monotonic() - started:5.1f}s {name}", flush=True)
        with open(out, "w") as handle:
            json.dump(results, handle, indent=1)
    os.environ["MUTANT_UNDER_TEST"] = ""
    return 0


if __name__ == "__main__":
    sys.exit(main())
