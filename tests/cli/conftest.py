"""Fixtures of the command-line tests: run `memlm` in-process, record what reaches generate()."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from memlm import MemoryModel
from memlm.cli import app


@pytest.fixture
def run():
    """run("generate", "hi", ...) -> click Result; output holds stdout and stderr.
    Tables are 250 columns wide, so that no cell wraps."""
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, [str(arg) for arg in args], input=input, env={"COLUMNS": "250"})

    return invoke


@pytest.fixture
def generate_calls(monkeypatch):
    """Every MemoryModel.generate call a command makes, in order: .model, .kwargs, and .seed, torch's
    seed when it was called. The calls still generate."""
    calls = []
    original = MemoryModel.generate

    def recording(self, *args, **kwargs):
        calls.append(SimpleNamespace(model=self, kwargs=kwargs, seed=torch.initial_seed()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MemoryModel, "generate", recording)
    return calls

