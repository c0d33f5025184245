# secure-ml-api: every command the README's Commands section lists.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
MODEL_DIR ?= var/model
STAMP := $(VENV)/.installed

# Load-test and bench parameters (override on the command line: make loadtest USERS=100).
LOADTEST_URL ?= http://127.0.0.1:8000
USERS ?= 30
SPAWN_RATE ?= 10
DURATION ?= 60s
P99_BUDGET_MS ?= 250
# make bench ROUNDS=3 PEERS=mlserver REDIS_MODE=cluster (BENCH_ARGS: any other bench.py option).
ROUNDS ?= 2
PEERS ?=
REDIS_MODE ?= standalone
BENCH_ARGS ?=
BASELINE ?=

.PHONY: install run test lint fmt model cluster cluster-down loadtest bench capacity fuzz clean \
	packages-run packages-test

install: $(STAMP)

$(STAMP): requirements-dev.lock requirements.lock pyproject.toml
	@# A venv without pip is what `python3 -m venv` leaves when ensurepip is missing: remake it.
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	@# uv itself, checked against its hashes in the dev lock (which also pins its version).
	@$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r <(sed -n '/^uv==/,/^    #/p' requirements-dev.lock | grep -v '^    #')
	$(UV) pip install --quiet --python $(PY) --require-hashes -r requirements-dev.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $(STAMP)

model: install
	@test -f $(MODEL_DIR)/model.joblib || $(PY) -m service.ml.train --out $(MODEL_DIR)

# System packages (apt-get, through sudo when not root; SYSTEM_PACKAGES=skip or dry-run):
# redis-server, curl (and python3-venv if `python3 -m venv` fails) for run; also nginx, wrk,
# redis-sentinel, chromium and chromium-driver for test. .ci/run uses the same script.
packages-run:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/system-packages.sh run

packages-test:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/system-packages.sh test

run: packages-run install model
	$(PY) -m service.devserver

test: packages-test install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(PY) deploy/lint.py

fmt: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

cluster: install model
	$(PY) deploy/cluster.py up

cluster-down:
	@if [ -x $(PY) ]; then $(PY) deploy/cluster.py down; else echo "nothing to stop"; fi

loadtest: install
	$(PY) deploy/loadtest/run.py --url $(LOADTEST_URL) --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) --p99-budget-ms $(P99_BUDGET_MS)

bench: install model
	$(PY) deploy/bench/bench.py --rounds $(ROUNDS) --redis-mode $(REDIS_MODE) $(BENCH_ARGS) $(if $(strip $(PEERS)),--peers $(PEERS)) $(if $(strip $(BASELINE)),--baseline $(BASELINE))

# Redis keys and bytes per active user and session, and the rate-limit state before/after
# GCRA (deploy/bench/capacity.py: 1,000 users unless USERS= is given on the command line).
capacity: install model
	$(PY) deploy/bench/capacity.py --model-dir $(MODEL_DIR) --json reports/capacity.json \
		$(if $(filter command line environment,$(origin USERS)),--users $(USERS))

fuzz: install
	FUZZ_EXAMPLES=2000 $(PY) -m pytest tests/fuzz -p no:cacheprovider

clean:
	rm -rf $(VENV) var reports .mypy_cache .ruff_cache .pytest_cache
