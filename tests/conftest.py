from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Without a GPU, Triton kernels (memlm.store.fused_topk) run in Triton's interpreter. Triton reads the
# flag when it jits its own helpers, at its import, which torch and transformers trigger where Triton is
# installed: so it is set here, before either is imported (no torch yet to ask for CUDA: nvidia-smi).
# (Test modules that import this file by name run it again, later: by then the flag is set.)
if shutil.which("nvidia-smi") is None and "TRITON_INTERPRET" not in os.environ:
    assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could set TRITON_INTERPRET"
    os.environ["TRITON_INTERPRET"] = "1"

# pytest-xdist's workers (`make test` runs two) start with COLUMNS=80 and LINES=24 in their environment:
# rich would fix the command line's console at 80 columns when memlm.cli is first imported, and the CLI
# tests' wide tables (COLUMNS=250 per call) would wrap. Without them rich reads COLUMNS at each print.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

import pytest
import torch
from require_all import (  # noqa: F401 (the CI rule's hooks, see require_all.py)
    pytest_collectreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from stores import BACKENDS, stop_servers, store_url
from tiny import ARCHITECTURES, save_tiny_folder, tiny_model, tiny_tokenizer

import memlm
import memlm.paths
from memlm.memories.template import TemplateMemory

# One intra-op thread per core left to each pytest-xdist worker (OMP_NUM_THREADS, where set, wins): two
# workers with two threads each on two cores made OpenMP's spinning threads fight, and a 5 s training
# test ran past its 300 s limit in CI.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or
                          max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

# The converted default model is cached where users keep it, so the integration tests convert it
# once per machine; everything else runs against per-test temporary directories.
REAL_CACHE = memlm.paths.cache_dir()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test writes into the real user directories."""
    monkeypatch.setenv("MEMLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEMLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEMLM_STORE", raising=False)


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param


@pytest.fixture
def backbone(architecture):
    return tiny_model(architecture)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return save_tiny_folder(tmp_path_factory.mktemp("tiny-llama"))


# The template mechanism (src/memlm/memories/template.py) is held to the same contract as the
# built-in ones, so the skeleton a new mechanism starts from is known to work.
memlm.register_memory(TemplateMemory)


@pytest.fixture(params=memlm.available_mechanisms())
def mechanism(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def default_backbone():
    """The real default model (SmolLM2-135M-Instruct), loaded once for the integration tests."""
    return memlm.load_backbone(cache=REAL_CACHE)


# --- fact store backends ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _store_servers():
    """Where the session's store servers keep their data (a folder of their own, not under pytest's
    rotating temporary folder: a later pytest run on the same machine removes the oldest of those,
    and with it a running PostgreSQL's socket and data); they stop, and it goes, at the end."""
    directory = Path(tempfile.mkdtemp(prefix="memlm-test-servers-"))
    try:
        yield directory
    finally:
        stop_servers()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, _store_servers) -> str:
    """A fresh, empty fact store of each backend, as the URL (or file) `memlm.Memory(store=...)` takes."""
    return store_url(request.param, tmp_path, _store_servers / "postgres")


@pytest.fixture(params=BACKENDS, scope="module")
def module_store(request, tmp_path_factory, _store_servers) -> str:
    """As `store`, shared by the tests of a module."""
    return store_url(request.param, tmp_path_factory.mktemp("store"), _store_servers / "postgres")


@pytest.fixture
def postgres_store(tmp_path, _store_servers) -> str:
    """A fresh database on the session's PostgreSQL server (pgvector), as a URL."""
    return store_url("postgres", tmp_path, _store_servers / "postgres")
