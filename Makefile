# Every target bootstraps its own virtual environment from the committed lock (requirements/*.txt):
# a fresh machine needs only python3 (3.11+). `make lock` refreshes the lock.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
# The lock pins every package, the build backend included; nothing is resolved at install time.
UV_INSTALL := $(UV) pip install --quiet --python $(BIN)/python --require-hashes --no-deps
PROJECT_INSTALL := $(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation
LOCK_HASH = $(shell cat pyproject.toml requirements/$(1).txt | sha1sum | cut -c1-12)
DEMO_STAMP := $(VENV)/.demo-$(call LOCK_HASH,demo)
DEV_STAMP := $(VENV)/.dev-$(call LOCK_HASH,dev)
# Parallel test processes (pytest-xdist); each starts its own private redis-server.
JOBS ?= 2
PYTEST_ARGS ?=
PYTEST := $(BIN)/python -m pytest

.PHONY: demo test unit integration e2e faults deploy lint typecheck schema redis-server chromium clean bench \
        lock test-latest test-slow fuzz

$(UV): requirements/uv.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tokenwire needs Python 3.11+"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --disable-pip-version-check --require-hashes --no-deps \
	  -r requirements/uv.txt
	@touch $@

# The demo's environment: runtime dependencies and the simulator's extra, nothing for development.
$(DEMO_STAMP): $(UV) pyproject.toml requirements/demo.txt
	@$(UV_INSTALL) -r requirements/demo.txt
	@$(PROJECT_INSTALL) -e .
	@rm -f $(VENV)/.demo-* && touch $@

$(DEV_STAMP): $(UV) pyproject.toml requirements/dev.txt
	@$(UV_INSTALL) -r requirements/dev.txt
	@$(PROJECT_INSTALL) -e '.[dev]'
	@rm -f $(VENV)/.dev-* && touch $@

# The official AsyncAPI parser, the TypeScript generator and tsc, pinned by tools/contract/package-lock.json
# (the e2e lane's contract tests run them; Node.js 20+ and npm come with the machine).
CONTRACT_TOOLS := tools/contract/node_modules/.installed
$(CONTRACT_TOOLS): tools/contract/package.json tools/contract/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: the contract tests need Node.js 20+ and npm"; exit 1; }
	@npm ci --prefix tools/contract --ignore-scripts --no-audit --no-fund --silent
	@touch $@

# redis-server is a system package; install it when it is missing (CI machines start bare).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The gateway page's browser tests drive Debian's headless Chromium through its chromedriver
# (/usr/bin/chromium, /usr/bin/chromedriver); nothing is downloaded at run time.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "chromium or chromedriver not found: installing them with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: $(DEMO_STAMP)
	@$(BIN)/tokenwire demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check worker tests bench tools
	$(BIN)/ruff format --check worker tests bench tools

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

schema: $(DEV_STAMP)
	$(BIN)/tokenwire schema

# Lanes (markers set by directory in tests/conftest.py). `make unit` needs no redis-server.
unit: $(DEV_STAMP)
	$(PYTEST) -m unit -n $(JOBS) $(PYTEST_ARGS)

integration: $(DEV_STAMP) redis-server
	$(PYTEST) -m integration -n $(JOBS) $(PYTEST_ARGS)

e2e: $(DEV_STAMP) redis-server chromium $(CONTRACT_TOOLS)
	$(PYTEST) -m e2e -n $(JOBS) $(PYTEST_ARGS)

faults: $(DEV_STAMP) redis-server
	$(PYTEST) -m faults -n $(JOBS) $(PYTEST_ARGS)

deploy: $(DEV_STAMP)
	$(PYTEST) -m deploy $(PYTEST_ARGS)

# What CI gates on: lint, types, then every lane in one parallel run, with coverage of worker/ and the
# time each lane took.
test: $(DEV_STAMP) redis-server chromium $(CONTRACT_TOOLS) lint typecheck
	$(PYTEST) -n $(JOBS) -m "not slow_lane" --cov=worker --cov-report=term:skip-covered \
	  --cov-fail-under=$$(cat .ci/coverage-floor) $(PYTEST_ARGS)

# The fuzz lane: each parser of outside bytes (SSE framing, the dialects, error bodies) for
# TOKENWIRE_FUZZ_SECONDS (default 10) each, coverage-guided by atheris when it is installed, else by
# hypothesis; `python -m tests.fuzz.TARGET` runs one target by hand from its committed seeds.
fuzz: $(DEV_STAMP)
	$(PYTEST) tests/fuzz -m slow_lane -n $(JOBS) $(PYTEST_ARGS)

# The runs too long for the gate (documented in README "Tests").
test-slow: $(DEV_STAMP) redis-server
	$(PYTEST) -m slow_lane $(PYTEST_ARGS)

# The second lane: the unit and integration lanes against the newest releases the ranges in
# pyproject.toml allow, in their own environment. Not a gate: it shows the next upstream change first.
LATEST := .venv-latest
test-latest: $(UV) redis-server
	@test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	@$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -e '.[dev]'
	@$(UV) pip freeze --python $(LATEST)/bin/python | grep -iE '^(msgspec|redis|httpx|httpx-sse|httpx-aiohttp|aiohttp)=='
	$(LATEST)/bin/python -m pytest -m "unit or integration" -n $(JOBS) -p no:cacheprovider $(PYTEST_ARGS)

# Refresh the lock: the newest releases the ranges allow, for every platform and Python 3.11+.
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --no-emit-index-url --quiet
lock: $(UV)
	$(UV) pip compile pyproject.toml requirements/build.in --extra dev $(LOCK_FLAGS) --upgrade \
	  -o requirements/dev.txt
	$(UV) pip compile pyproject.toml requirements/build.in --extra sim $(LOCK_FLAGS) --upgrade \
	  -c requirements/dev.txt -o requirements/demo.txt
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -c requirements/dev.txt -o requirements/runtime.txt

# make bench: tokenwire against a naive worker and the floor, the gateway against a naive gateway
# (bench/results/latest.json);
# make bench QUICK=1: a subset (about four minutes with the gateway scenario gw-watch). Then the short-job scenario (bench/shortjobs.py:
# tokenwire, its floor, the naive worker and arq, in its own environment bench/.arq-venv; bench/results/shortjobs.json).
# Then what a job's `review` (segments) adds per token (bench/segments.py); last, n=4 candidates
# against 4 separate jobs (bench/candidates.py; bench/results/candidates.json).
bench: $(DEV_STAMP) redis-server
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)
	$(if $(QUICK),,$(BIN)/python -m bench.run --scaling)
	$(BIN)/python -m bench.shortjobs $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.segments $(if $(QUICK),--tokens 50000 --repeat 3,)
	$(BIN)/python -m bench.candidates $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) $(LATEST) bench/.arq-venv dist build .mypy_cache .ruff_cache .pytest_cache .coverage

# The image lane (README "Development"; needs root): deploy/Dockerfile executed without an engine on a debootstrap
# root of the Debian release its base names (cached in /var/cache/tokenwire-image-root), then run with
# chroot as its user: /readyz against a private Redis, a simulated job to `done`. Podman builds it too where
# it can (installed here if missing); it skips quoting podman's error where it cannot.
.PHONY: test-image
test-image: $(DEV_STAMP) redis-server
	@command -v podman >/dev/null 2>&1 || { \
	  echo "podman not found: installing it with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null; }
	$(PYTEST) tests/image -m "slow_lane or unit" -p no:cacheprovider $(PYTEST_ARGS)
