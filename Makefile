# fleet — developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help venv demo test test-fast lint fmt bench clean

help:
	@echo "make demo   - run fleet end to end on a bundled sample site (SQLite sink), then search"
	@echo "make test   - run the test suite (real nats-server, loopback HTTP servers)"
	@echo "make lint   - ruff + mypy --strict"
	@echo "make bench  - fleet vs Scrapy on a generated 2,000-page loopback site"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) cmd/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not fault" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check fleet tests bench cmd
	$(VENV)/bin/ruff format --check fleet tests bench cmd
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format fleet tests bench cmd
	$(VENV)/bin/ruff check --fix fleet tests bench cmd

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info demo.db demo.db-*
