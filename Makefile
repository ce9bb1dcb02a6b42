# comfy-service developer commands. `make up` runs the service, `make test` runs every test;
# both do their own set-up on a fresh machine.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Go builds the Consul and Nomad agents, versitygw (S3) and the Nomad Autoscaler when no binary is
# found (tools/agents/build.sh).
export PATH := $(PATH):/usr/local/go/bin

.PHONY: up test venv redis-server monitoring-tools agents lint bench clean

# Pinned dependencies: service.lock is what the images install, dev.lock adds the test and local
# extras (pinned to the same versions). Installing both here means tests run on what the image ships.
LOCKS   := requirements/service.lock requirements/dev.lock

$(STAMP): pyproject.toml $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/service.lock -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## Regenerate requirements/*.lock from pyproject.toml (keeps current pins; LOCK_ARGS=--upgrade moves them).
.PHONY: lock
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock'
lock: $(STAMP)
	$(BIN)/uv pip compile -q $(LOCK_FLAGS) $(LOCK_ARGS) pyproject.toml -o requirements/service.lock
	$(BIN)/uv pip compile -q $(LOCK_FLAGS) $(LOCK_ARGS) pyproject.toml --extra test --extra local \
		-c requirements/service.lock -o requirements/dev.lock

## Run the service on embedded defaults (no root, no apt needed). MESH=consul or MESH=nomad also
## needs the Consul / Nomad agents (built once by `make agents`).
UP_DEPS := $(STAMP)
ifneq ($(filter consul nomad,$(MESH)),)
UP_DEPS += agents
endif
up: $(UP_DEPS)
	$(BIN)/comfy-service up

## Install redis-server when missing (apt-get as root; otherwise say what to install).
redis-server:
	@bash scripts/ensure-command.sh redis-server redis-server

## promtool, prometheus, amtool and alertmanager for the monitoring tests: amtool and alertmanager
## as redis-server (apt-get as root, else say what to install); Prometheus with Consul discovery,
## which Debian's package lacks, built once and cached like the agents (monitoring/tools/).
monitoring-tools:
	@bash monitoring/tools/prometheus-tools.sh

## Real Consul, Nomad, versitygw (S3 store) and Nomad Autoscaler binaries for tests: found, or built
## once and cached (~/.cache).
agents:
	@bash tools/agents/build.sh

## Headless Chromium for the Consul UI test (tests/test_consul_ui.py): Debian's chromium package,
## installed like redis-server (apt-get as root, else say what to install). No browser download.
.PHONY: chromium
chromium:
	@bash scripts/ensure-command.sh chromium chromium

## Run every test, doing all set-up first.
test: $(STAMP) redis-server chromium monitoring-tools agents
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

## The fault drill (docs/drill.md): faults of every kind under load, then no task lost or run
## twice. Long by default; DRILL_ARGS="--short" is the run tests/test_drill.py makes.
.PHONY: drill
drill: $(STAMP) redis-server agents
	$(BIN)/python scripts/drill.py $(DRILL_ARGS)
