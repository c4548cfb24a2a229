# The few targets a newcomer needs. `make test` and `make demo` do all set-up themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pbp-installed
PARITY_VENV := .venv-parity
PARITY_STAMP := $(PARITY_VENV)/.installed
PARITY_DIR := build/parity
PARITY_REF := $(PARITY_DIR)/reference.npz

.PHONY: setup test test-slow lint format typecheck parity demo demo-down bench lock clean

setup: $(STAMP)

# torch first: 2.13.0 is the CPU build this machine keeps on disk; a bare 'torch' would pull a CUDA build.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c requirements.lock torch
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

# The default suite, including parity with the original Keras ProteinBERT (reference built once, then cached).
test: setup $(PARITY_REF)
	PBP_PARITY_DIR=$(PARITY_DIR) $(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

$(PARITY_STAMP): tests/parity/requirements.txt
	$(PYTHON) -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/pip install -q --upgrade pip
	$(PARITY_VENV)/bin/pip install -q -r tests/parity/requirements.txt
	@touch $@

$(PARITY_REF): $(PARITY_STAMP) tests/parity/keras_reference.py
	$(PARITY_VENV)/bin/python tests/parity/keras_reference.py --out $(PARITY_DIR)

# Parity alone: build the original Keras model with seeded weights, then check pbp reproduces it within 1e-5.
parity: setup $(PARITY_REF)
	PBP_PARITY_DIR=$(PARITY_DIR) $(BIN)/pytest -m parity tests/parity

lint: setup
	$(BIN)/ruff check platform tests jobs
	$(BIN)/ruff format --check platform tests jobs
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format platform tests jobs
	$(BIN)/ruff check --fix platform tests jobs

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/pbp bench model --config configs/model/tiny.yaml
	$(BIN)/pbp bench model --config configs/model/base.yaml

# The whole pipeline on the local stack (docs/demo.md): venv, stack, then `pbp demo`; a second run reuses them.
demo: setup
	$(BIN)/pbp stack up
	$(BIN)/pbp demo --config configs/demo/default.yaml

demo-down: setup
	$(BIN)/pbp stack down

# Re-resolve the lock from pyproject's ranges (review the diff before committing).
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip
	build/lock-venv/bin/pip install -q torch==2.13.0 && build/lock-venv/bin/pip install -q -e '.[dev]'
	(head -2 requirements.lock; build/lock-venv/bin/pip freeze --exclude-editable | grep -v '^pbp' | sed 's/+cpu$$//') > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) $(PARITY_VENV) build .pytest_cache .ruff_cache .mypy_cache
