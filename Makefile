# Every target bootstraps its own virtual environment: a fresh machine needs only python3 (3.11+).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit integration e2e faults schema redis-server clean bench

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tokenwire needs Python 3.11+"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# redis-server is a system package; install it when it is missing (CI machines start bare).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

demo: $(STAMP)
	@$(BIN)/tokenwire demo

lint: $(STAMP)
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/tokenwire schema

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: $(STAMP) redis-server lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

faults: $(STAMP) redis-server
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

# make bench: tokenwire against a naive worker and the floor (bench/results/latest.json);
# make bench QUICK=1: a subset in under two minutes.
bench: $(STAMP) redis-server
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)
	$(if $(QUICK),,$(BIN)/python -m bench.run --scaling)

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache
