# fleet images. Needs BuildKit (DOCKER_BUILDKIT=1, or buildx); see docs/containers.md.
#
#   docker build --target slim    -t fleet:local .          publisher, indexer, HTTP workers
#   docker build --target browser -t fleet-browser:local .  + Debian Chromium (headless shell)
#   docker build --target dev     -t fleet-dev:local .      + watchfiles (compose dev override)
#   docker build --target slim --build-arg EXTRAS=kubernetes -t fleet-kubernetes:local .
#                                                           + the Kubernetes client (supervisor)
#
# BASE_IMAGE is any Debian bookworm image with Python >= 3.11 and venv: the official
# python:3.12-slim-bookworm by default, or a local one built with mmdebstrap where no
# registry is reachable (`make images BASE_IMAGE=fleet-base:local`).
# Behind a TLS-intercepting proxy, give pip the CA bundle as a build secret (never a layer):
#   --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------
# runtime: the OS layer every target shares (tini, CA certificates, an unprivileged user).
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The apt cache lives in cache mounts, so the official image's docker-clean hook must go.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    set -eu; \
    rm -f /etc/apt/apt.conf.d/docker-clean; \
    missing=""; \
    [ -x /usr/bin/tini ] || missing="$missing tini"; \
    [ -e /etc/ssl/certs/ca-certificates.crt ] || missing="$missing ca-certificates"; \
    if [ -n "$missing" ]; then \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; \
    fi; \
    groupadd --system --gid 10001 fleet; \
    useradd --system --uid 10001 --gid fleet --home-dir /data --create-home \
        --shell /usr/sbin/nologin fleet

# ---------------------------------------------------------------------------------------
# build: a virtualenv with the dependencies first (cached until pyproject.toml changes),
# then fleet itself without dependencies.
FROM runtime AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then \
        export PIP_CERT=/run/secrets/cacert REQUESTS_CA_BUNDLE=/run/secrets/cacert; \
    fi; \
    /opt/venv/bin/python -c 'import tomllib; \
project = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
open("/src/requirements.txt", "w").write("\n".join(project["dependencies"]) + "\n"); \
browser = project["optional-dependencies"]["browser"]; \
open("/src/requirements-browser.txt", "w").write("\n".join(browser) + "\n")'; \
    /opt/venv/bin/pip install --upgrade pip setuptools wheel; \
    /opt/venv/bin/pip install -r /src/requirements.txt
# EXTRAS: optional extras of pyproject.toml to add, such as `kubernetes` (the official
# client, for `fleet supervisor --backend kubernetes`; large, so not in the default image):
#   docker build --target slim --build-arg EXTRAS=kubernetes -t fleet-kubernetes:local .
ARG EXTRAS=""
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacert \
    set -eu; \
    if [ -n "$EXTRAS" ]; then \
        if [ -s /run/secrets/cacert ]; then \
            export PIP_CERT=/run/secrets/cacert REQUESTS_CA_BUNDLE=/run/secrets/cacert; \
        fi; \
        /opt/venv/bin/python -c 'import sys, tomllib; \
extras = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["optional-dependencies"]; \
print("\n".join(d for name in sys.argv[1].replace(",", " ").split() for d in extras[name]))' \
            "$EXTRAS" > /src/requirements-extras.txt; \
        /opt/venv/bin/pip install -r /src/requirements-extras.txt; \
    fi
COPY README.md /src/README.md
COPY fleet /src/fleet
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then \
        export PIP_CERT=/run/secrets/cacert REQUESTS_CA_BUNDLE=/run/secrets/cacert; \
    fi; \
    /opt/venv/bin/pip install --no-deps --no-build-isolation /src; \
    /opt/venv/bin/fleet --help >/dev/null

# venv: what the images run; no installer left in it.
FROM build AS venv
RUN /opt/venv/bin/pip uninstall --yes --quiet setuptools wheel pip

# dev (compose/docker-compose.dev.yml): + watchfiles, to restart a role on a source change.
FROM build AS dev-venv
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then \
        export PIP_CERT=/run/secrets/cacert REQUESTS_CA_BUNDLE=/run/secrets/cacert; \
    fi; \
    /opt/venv/bin/pip install 'watchfiles>=0.21'; \
    /opt/venv/bin/pip uninstall --yes --quiet setuptools wheel pip

FROM runtime AS dev
COPY --from=dev-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER fleet:fleet
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--", "fleet"]
CMD ["--help"]
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD ["fleet", "check"]

# browser-venv: + the `fleet[browser]` extra (Playwright) for rendering workers, as
# pyproject.toml pins it (written out by the build stage). Playwright's own
# bundled browser is not downloaded: the browser image uses Debian's headless shell.
FROM build AS browser-venv
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then \
        export PIP_CERT=/run/secrets/cacert REQUESTS_CA_BUNDLE=/run/secrets/cacert; \
    fi; \
    /opt/venv/bin/pip install -r /src/requirements-browser.txt; \
    /opt/venv/bin/pip uninstall --yes --quiet setuptools wheel pip

# ---------------------------------------------------------------------------------------
# browser: slim + Debian's Chromium headless shell (Chromium without the browser UI: what
# Playwright launches for headless; faster and smaller than the full browser) + Playwright.
FROM runtime AS browser
# libatomic1: Playwright's bundled node (the driver) does not start without it.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
        chromium-headless-shell fonts-liberation libatomic1 \
    && /usr/lib/chromium/chromium-headless-shell --version
COPY --from=browser-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    FLEET_CHROMIUM_PATH=/usr/lib/chromium/chromium-headless-shell
USER fleet:fleet
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--", "fleet"]
CMD ["--help"]
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD ["fleet", "check"]

# ---------------------------------------------------------------------------------------
# slim (the default target): publisher, indexer, supervisor and HTTP-only workers.
FROM runtime AS slim
COPY --from=venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER fleet:fleet
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--", "fleet"]
CMD ["--help"]
# The role comes from FLEET_ROLE (nats, publisher, worker, indexer); compose sets it.
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD ["fleet", "check"]
