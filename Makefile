# The few targets a newcomer needs. `make test` and `make demo` do all set-up themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pbp-installed
PARITY_VENV := .venv-parity
PARITY_STAMP := $(PARITY_VENV)/.installed
PARITY_DIR := build/parity
PARITY_REF := $(PARITY_DIR)/reference.npz

.PHONY: prometheus setup test test-slow lint format typecheck parity demo demo-down bench lock clean

setup: $(STAMP)

# torch first: 2.13.0 is the CPU build this machine keeps on disk; a bare 'torch' would pull a CUDA build.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c requirements.lock torch
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

# Prometheus (Debian's package, 2.x) for the stack's metrics and the dashboard tests: installed where we may (root with
# apt-get, as in CI); elsewhere one line says how, the stack runs without it and the metrics tests fail saying why.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus (apt-get)"; \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; \
	  else echo "prometheus is not installed: sudo apt-get install -y --no-install-recommends prometheus"; fi; }

# The default suite, including parity with the original Keras ProteinBERT (reference built once, then cached).
test: setup prometheus $(PARITY_REF)
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

# Every benchmark, then one report (build/bench/report.md and .json): about 40 minutes on 2 CPU cores (the 4M-record
# build dominates). Each figure is a ratio against a baseline measured in the same run; the old JSON goes first, so
# the report holds this run's figures only. `bench stack` times a stack of its own on an otherwise idle machine, so
# the main stack is stopped first (its data kept) and started again after.
BENCH := build/bench
bench: setup prometheus
	mkdir -p $(BENCH) && rm -f $(BENCH)/*.json $(BENCH)/report.md
	$(BIN)/pbp stack down
	$(BIN)/pbp bench stack --json $(BENCH)/stack.json
	$(BIN)/pbp stack up
	$(BIN)/pbp bench model --config configs/model/base.yaml --json $(BENCH)/model.json
	$(BIN)/pbp bench arch --json $(BENCH)/arch.json
	$(BIN)/pbp bench data --json $(BENCH)/data.json
	$(BIN)/pbp bench build --ray-workers 1,2 --json $(BENCH)/build.json
	$(BIN)/pbp bench train --json $(BENCH)/train.json
	$(BIN)/pbp bench predict --json $(BENCH)/predict.json
	$(BIN)/pbp bench tune --json $(BENCH)/tune.json
	@if $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		$(BIN)/pbp bench gpu --json $(BENCH)/gpu.json; \
	else echo "bench gpu: skipped, torch sees no CUDA GPU here"; fi
	$(BIN)/pbp bench report $(BENCH)

# The whole pipeline on the local stack (docs/demo.md): venv, stack, then `pbp demo`; a second run reuses them.
demo: setup prometheus
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
