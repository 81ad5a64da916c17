"""`memlm demo`, the tour `make demo` runs, on the real default model (about a minute on 2 CPU cores)."""

from __future__ import annotations

import re

import pytest
from conftest import REAL_CACHE

pytestmark = pytest.mark.integration

SECTIONS = ["1. backbone", "2. the bare model answers", "3. with an untrained recurrent memory attached",
            "4. a chat session that survives a restart",
            "5. a user's facts recalled in a later session, after a restart",
            "6. learning facts: importance, duplicates, retrieval",
            "7. a fact hidden in 16K tokens of a book, about people training never saw"]


def test_demo_runs_the_whole_tour(run, monkeypatch):
    monkeypatch.setenv("MEMLM_CACHE", str(REAL_CACHE))  # the default model converted once per machine
    result = run("demo")
    assert result.exit_code == 0, result.output  # 1 if the session did not reload or the bank did not recall
    output = result.stdout
    titles = [title for title in SECTIONS if f" {title} " in output]
    assert titles == SECTIONS and [output.index(title) for title in titles] == sorted(
        output.index(title) for title in titles)
    assert "bare:      'The capital of France is Paris" in output
    assert "max |logit difference| vs bare model: 0.00e+00 (gates start at zero)" in output
    assert re.search(r"reloaded session 'memlm-demo' from .* into a fresh model: 2 turns, state identical: True",
                     output)
    assert "recalled the dog's name across sessions: True" in output
    assert re.search(r"learn 'Einstein developed the theory of relativity!' +-> duplicate", output)
    assert re.search(r"retrieve \"Einstein's theory\":\n +[0-9.]+ +Einstein developed the theory of relativity\.",
                     output)
    assert re.search(r"the facts, scattered through 16,[0-9]{3} tokens", output)
    assert re.search(r"bare model \(last 1,024 tokens\) +-> .* wrong", output)
    assert re.search(r"babilong preset \(memory\) +-> .* correct", output)
    assert re.search(r"done in [0-9.]+ s", output)
