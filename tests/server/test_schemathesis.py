"""schemathesis against the server's OpenAPI schema, a bounded number of cases per operation: no 5xx, and
every answer (errors included) matches what the schema declares."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from serverkit import build_app, serving
from tiny import tiny_tokenizer

# per operation and generation mode; the reliability campaign raises it (docs/reliability.md)
CASES_PER_OPERATION = int(os.environ.get("MEMLM_SCHEMATHESIS_CASES", "12"))


@pytest.fixture(scope="module")
def live_url(tmp_path_factory) -> Iterator[str]:
    """One server for the module, on its own home (the schema fuzzes it with everything it accepts)."""
    home = tmp_path_factory.mktemp("schemathesis-home")
    previous, threads = os.environ.get("MEMLM_HOME"), torch.get_num_threads()
    os.environ["MEMLM_HOME"] = str(home)
    torch.set_num_threads(1)
    try:
        app = build_app(tiny_tokenizer(), ("bank", "knn-joint"), max_tokens_limit=8, segment_length=64,
                        max_document_chars=5_000)
        with serving(app) as url:
            yield url
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop("MEMLM_HOME", None)
        else:
            os.environ["MEMLM_HOME"] = previous


def test_no_server_errors_and_answers_match_the_schema(live_url):
    """Each operation gets valid cases and cases that break the schema (wrong types, missing fields)."""
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def check(case) -> None:
                case.call_and_validate(base_url=live_url, checks=[not_a_server_error, response_schema_conformance])

            try:
                check()
            except Unsatisfiable:  # nothing to break in an operation without parameters
                continue
            except Exception as error:  # noqa: BLE001 - collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}): {str(error)[:1500]}")
    assert not failures, "\n\n".join(failures)
