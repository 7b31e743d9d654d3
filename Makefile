# fleet — developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help venv demo test test-fast lint fmt bench bench-crawl bench-render bench-scale bench-serve clean \
	images base-image dev-image ci-images up down logs ps scale compose-env

# Containers (docs/containers.md). BuildKit is required; CI passes DOCKER=/usr/bin/docker
# (Debian's client, which builds with BuildKit) and BASE_IMAGE=fleet-base:local (built here
# with mmdebstrap when missing, for machines without a registry).
DOCKER        ?= docker
BASE_IMAGE    ?= python:3.12-slim-bookworm
IMAGE         ?= fleet:local
BROWSER_IMAGE ?= fleet-browser:local
CACERT        ?= /etc/ssl/certs/ca-certificates.crt
N             ?= 3
comma         := ,
COMPOSE       := $(DOCKER) compose --project-directory compose -f compose/docker-compose.yml
BUILD         := DOCKER_BUILDKIT=1 $(DOCKER) build --progress=plain \
	$(if $(wildcard $(CACERT)),--secret id=cacert$(comma)src=$(CACERT)) \
	--build-arg BASE_IMAGE=$(BASE_IMAGE)

help:
	@echo "make demo   - run fleet end to end on a bundled sample site (SQLite sink), then search"
	@echo "make test   - run the test suite (real nats-server, loopback HTTP servers)"
	@echo "make lint   - ruff + mypy --strict"
	@echo "make bench  - fleet vs Scrapy on a generated 2,000-page loopback site"
	@echo "make bench-crawl  - fleet run --crawl vs Scrapy CrawlSpider vs Crawlee, 2,000 pages from the root"
	@echo "make bench-render - --render always vs a bare Playwright loop and Crawlee; auto vs never on python3-doc"
	@echo "make bench-scale  - supervisor: burst to max replicas, drain to min, URLs/s per replica count"
	@echo "make bench-serve  - fleet serve: GET /api/search on SQLite, req/s and p99 (target 500, 50 ms)"
	@echo "make images - build $(IMAGE) and $(BROWSER_IMAGE) (BASE_IMAGE=fleet-base:local offline)"
	@echo "make dev-image - fleet-dev:local for compose/docker-compose.dev.yml (reload on change)"
	@echo "make up | down | logs | ps | scale N=5 - the compose stack (compose/; scale stops the supervisor)"

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
	$(PY) -m bench.crawl $(BENCH_CRAWL_ARGS)

bench-crawl: $(STAMP)
	$(PY) -m bench.crawl $(BENCH_ARGS)

bench-render: $(STAMP)
	$(PY) -m bench.render $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(PY) -m bench.scale $(BENCH_ARGS)

bench-serve: $(STAMP)
	$(PY) -m bench.serve $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info demo.db demo.db-*

# --- containers ----------------------------------------------------------------------

base-image:
ifeq ($(BASE_IMAGE),fleet-base:local)
	@$(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || { \
	  echo "building $(BASE_IMAGE) with mmdebstrap"; set -e; \
	  tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
	    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	    --dpkgopt='path-exclude=/usr/share/info/*' \
	    --customize-hook='rm -rf "$$1"/var/lib/apt/lists/* "$$1"/var/cache/apt/*.bin "$$1"/var/log/*.log' \
	    bookworm "$$tmp/base.tar"; \
	  $(DOCKER) import "$$tmp/base.tar" $(BASE_IMAGE); }
endif

images: base-image
	$(BUILD) --target slim -t $(IMAGE) .
	$(BUILD) --target browser -t $(BROWSER_IMAGE) .

dev-image: base-image
	$(BUILD) --target dev -t fleet-dev:local .

# Stand-ins for the images CI cannot pull (compose/docker-compose.ci.yml).
ci-images: images dev-image
	$(BUILD) -t fleet-ci-nats:local -f compose/ci/Dockerfile.nats compose/ci
	$(BUILD) --build-arg FLEET_IMAGE=$(IMAGE) -t fleet-ci-fakes:local -f compose/ci/Dockerfile.fakes .

# compose/.env with a random Meilisearch master key and API key, made once from .env.example.
compose/.env:
	@sed -e "s/^MEILI_MASTER_KEY=.*/MEILI_MASTER_KEY=$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')/" \
	  -e "s/^FLEET_API_KEY=.*/FLEET_API_KEY=$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')/" \
	  compose/.env.example > $@ && chmod 600 $@ && echo "wrote $@ (random MEILI_MASTER_KEY, FLEET_API_KEY)"

compose-env: compose/.env

up: compose/.env
	$(COMPOSE) up -d --wait

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f --tail=100

ps:
	$(COMPOSE) ps

# A fixed count by hand: the supervisor would otherwise correct it on the lag.
scale:
	$(COMPOSE) stop supervisor
	$(COMPOSE) up -d --no-recreate --scale worker=$(N)
