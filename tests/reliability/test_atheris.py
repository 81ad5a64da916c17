"""Coverage-guided fuzzing (atheris) of every file loader, bounded: `MEMLM_ATHERIS_RUNS` inputs per
target (1,000 here; the full campaign runs 10,000). The fuzzing itself runs in
`atheris_fuzz.py`, in a child process (libFuzzer owns its process); a target fails on any exception
other than a `MemlmError`, an input taking longer than 20 s, or the process passing 3 GB.

Without atheris installed these tests skip, unless `MEMLM_REQUIRE_ATHERIS=1` (set by `.ci/run`),
which makes a missing atheris a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNS = int(os.environ.get("MEMLM_ATHERIS_RUNS", "1000"))

try:
    import atheris  # noqa: F401
except ImportError:
    if os.environ.get("MEMLM_REQUIRE_ATHERIS") == "1":
        raise RuntimeError("MEMLM_REQUIRE_ATHERIS=1 but atheris is not installed (pip install atheris, or the "
                           "[dev] extra)") from None
    pytest.skip("atheris is not installed (MEMLM_REQUIRE_ATHERIS=1 makes this a failure)", allow_module_level=True)


def fuzz(tmp_path: Path, *options: str) -> dict:
    out = tmp_path / "atheris.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(HERE / "atheris_fuzz.py"), "--out", str(out), *options],
                          capture_output=True, text=True, env=env, timeout=900)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(1000)  # its fuzzing child may run up to 900 s
def test_every_file_loader_survives_coverage_guided_fuzzing(tmp_path):
    report = fuzz(tmp_path, "--runs", str(RUNS))
    failed = {r["target"]: r.get("crash", "")[-1500:] for r in report["targets"] if not r["passed"]}
    assert not failed, json.dumps(failed, indent=1)
    assert {r["target"] for r in report["targets"]} >= {"tensors", "state", "facts", "kv_records", "kv_vectors",
                                                         "jsonl", "yaml", "gguf_manifest"}
    assert all(r["runs"] >= RUNS for r in report["targets"]), report["targets"]


def test_the_fuzzing_harness_reports_an_untyped_exception_and_a_hang(tmp_path):
    """The harness must be able to fail: a loader raising RuntimeError, and one that never returns."""
    report = fuzz(tmp_path, "--runs", "50", "--timeout", "1", "--targets", "selftest_crash,selftest_hang")
    crash, hang = report["targets"]
    assert not crash["passed"] and "RuntimeError: selftest" in crash["crash"], crash
    assert not hang["passed"] and "timeout" in hang["crash"], hang
