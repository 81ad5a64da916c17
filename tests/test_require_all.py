"""The CI rule (tests/require_all.py): with MEMLM_REQUIRE_ALL=1 a skip fails, except the allowed ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SAMPLE = textwrap.dedent('''
    import pytest

    def test_missing_component():
        pytest.skip("bm25s is not installed")

    @pytest.mark.skipif(True, reason="needs a CUDA GPU")
    def test_cuda_only():
        pass

    @pytest.mark.xfail(reason="known")
    def test_expected_failure():
        assert False

    def test_runs():
        pass
''')
MODULE_SKIP = "import pytest\npytest.importorskip('a_module_that_is_not_installed')\n\ndef test_x():\n    pass\n"


# `make test` runs the suite on two pytest-xdist workers: the rule must hold there as in one process.
WORKERS = [pytest.param([], id="one-process"), pytest.param(["-n", "2"], id="xdist")]


def outcomes(tmp_path: Path, workers: list[str] | None = None, **env: str) -> tuple[dict[str, str], int, str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    plugin = tmp_path / "record.py"
    plugin.write_text(textwrap.dedent('''
        import json, os
        seen = {}
        def pytest_runtest_logreport(report):
            if report.when == "call" or report.outcome != "passed":
                seen.setdefault(report.nodeid.split("::")[-1], report.outcome)
        def pytest_collectreport(report):
            if report.outcome != "passed":
                seen[report.nodeid] = report.outcome
        def pytest_sessionfinish(session):
            if "PYTEST_XDIST_WORKER" not in os.environ:  # the controlling process sees every report
                open(os.environ["RECORD"], "w").write(json.dumps(seen))
    '''))
    record = tmp_path / "record.json"
    environment = {key: value for key, value in os.environ.items()  # nor this run's xdist worker's marks
                   if key not in ("MEMLM_REQUIRE_ALL", "MEMLM_ALLOWED_SKIPS") and not key.startswith("PYTEST_XDIST")}
    environment.update(PYTHONPATH=os.pathsep.join([str(TESTS), str(tmp_path)]), RECORD=str(record), **env)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "require_all", "-p", "record",
                          "-p", "no:cacheprovider", *(workers or []), "--rootdir", str(tmp_path),
                          "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
                         cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    return json.loads(record.read_text()), run.returncode, run.stdout


def test_without_the_variable_skips_stay_skips(tmp_path):
    seen, code, _ = outcomes(tmp_path)
    assert seen == {"test_missing_component": "skipped", "test_cuda_only": "skipped",
                    "test_expected_failure": "skipped", "test_runs": "passed", "test_module_skip.py": "skipped"}
    assert code == 0


@pytest.mark.parametrize("workers", WORKERS)
def test_in_ci_a_skip_fails_unless_allowed(tmp_path, workers):
    seen, code, output = outcomes(tmp_path, workers, MEMLM_REQUIRE_ALL="1")
    assert seen == {"test_missing_component": "failed", "test_cuda_only": "skipped",  # CUDA-only: allowed
                    "test_expected_failure": "skipped", "test_runs": "passed",  # xfail (reported skipped): kept
                    "test_module_skip.py": "skipped"}  # a module skip does not stop collection ...
    assert code == 1 and "FAILED test_module_skip.py" in output  # ... but fails the run, named at the end


@pytest.mark.parametrize("workers", WORKERS)
def test_a_module_skip_alone_fails_the_run(tmp_path, workers):
    (tmp_path / "sub").mkdir()
    seen, code, output = outcomes(tmp_path / "sub", workers, MEMLM_REQUIRE_ALL="1",
                                  MEMLM_ALLOWED_SKIPS="bm25s|CUDA")
    assert seen["test_missing_component"] == "skipped" and seen["test_module_skip.py"] == "skipped"
    assert code == 1 and "a_module_that_is_not_installed" in output


@pytest.mark.parametrize("allowed", ["bm25s|CUDA", "not installed"])
def test_allowed_skips_are_a_regular_expression(tmp_path, allowed):
    seen, code, _ = outcomes(tmp_path, MEMLM_REQUIRE_ALL="1", MEMLM_ALLOWED_SKIPS=allowed)
    assert seen["test_missing_component"] == "skipped"
    assert seen["test_cuda_only"] == ("skipped" if "CUDA" in allowed else "failed")
    assert code == 1  # one forbidden skip remains either way (the CUDA test, or the module's)
