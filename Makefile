# comfy-service developer commands. `make up` runs the service, `make test` runs every test;
# both do their own set-up on a fresh machine.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Go builds the Consul and Nomad agents when no binary is found (tools/agents/build.sh).
export PATH := $(PATH):/usr/local/go/bin

.PHONY: up test venv redis-server agents lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,local]'
	touch $(STAMP)

venv: $(STAMP)

## Run the service on embedded defaults (no root, no apt needed).
up: $(STAMP)
	$(BIN)/comfy-service up

## Install redis-server when missing (apt-get as root; otherwise say what to install).
redis-server:
	@bash scripts/ensure-command.sh redis-server redis-server

## Real Consul and Nomad binaries for tests: found, or built once and cached (~/.cache).
agents:
	@bash tools/agents/build.sh

## Run every test, doing all set-up first.
test: $(STAMP) redis-server agents
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .run

## Measure speed (report in docs/benchmarks.md); not part of `make test`.
bench: $(STAMP) redis-server
	@bash scripts/ensure-command.sh wrk wrk
	$(BIN)/python scripts/bench.py $(BENCH)
