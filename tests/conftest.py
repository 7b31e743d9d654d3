"""Shared fixtures: a real nats-server per test, a loopback site, settings that point at both.

In CI (CI set) a missing server binary fails the test; locally it skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.nats.server import EmbeddedNats, find_nats_server
from fleet.scrape.render.chromium import chromium_executable
from fleet.settings import Settings
from tests.docker_helpers import docker_available
from tests.site import CrawlSite, LoopbackSite

IN_CI = bool(os.environ.get("CI"))


def need(what: str, ok: bool) -> None:
    """A missing dependency fails in CI and skips locally."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but missing", pytrace=False)
    pytest.skip(f"{what} not available (set CI=1 to make this a failure)")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    try:
        find_nats_server()
    except ConfigError:
        need("nats-server", False)
    server = EmbeddedNats(store_dir=str(tmp_path / "jetstream")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def docker_ready() -> None:
    """A Docker engine with the compose plugin (fails in CI, skips locally without one)."""
    need("a Docker engine with the compose plugin", docker_available())


def need_browser() -> None:
    """Playwright and a Chromium to drive (fails in CI, skips locally without them)."""
    path = chromium_executable(Settings())
    ok = importlib.util.find_spec("playwright") is not None and (
        path is None or Path(path).exists()
    )
    need("Playwright and Chromium", ok)


@pytest.fixture
def site() -> Iterator[LoopbackSite]:
    with LoopbackSite() as s:
        yield s


@pytest.fixture
def settings(nats_server: EmbeddedNats, site: LoopbackSite, tmp_path: Path) -> Settings:
    return make_settings(nats_server, site.hostport, tmp_path)


def make_settings(nats_server: EmbeddedNats, hostport: str, tmp_path: Path) -> Settings:
    """The tests' settings (one place: short timeouts, the loopback site allowed)."""
    return Settings(
        nats_url=nats_server.url,
        allow_hosts=(hostport,),
        sink=f"sqlite:///{tmp_path / 'fleet.db'}",
        ack_wait_s=3.0,
        max_deliver=3,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
        fetch_timeout_s=5.0,
        indexer_batch_wait_s=0.1,
        drain_timeout_s=5.0,
        dedup_window_s=600.0,
        # One loopback host, many requests at once: tests choose their politeness limits.
        # robots.txt stays obeyed (the loopback site answers 404 for it: all allowed).
        host_concurrency=0,
        host_delay_s=0.0,
    )


@pytest.fixture
def crawl_site(canary: Canary) -> Iterator[CrawlSite]:
    """The known-graph docs site; its external links point at the canary (never hit)."""
    with CrawlSite(external=canary.url) as s:
        yield s


@pytest.fixture
def crawl_settings(nats_server: EmbeddedNats, crawl_site: CrawlSite, tmp_path: Path) -> Settings:
    return make_settings(nats_server, crawl_site.hostport, tmp_path)


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.1
) -> None:
    """Poll ``check`` until it is true; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Roles:
    """`fleet worker` / `fleet indexer` as real child processes (for kill -9 tests)."""

    def __init__(self, settings: Settings) -> None:
        self.env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``fleet <args>``; with ``log``, its stderr (the role's log) goes to that file."""
        with contextlib.ExitStack() as stack:
            stderr = stack.enter_context(log.open("ab")) if log is not None else None
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleet", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def roles(settings: Settings) -> AsyncIterator[Roles]:
    r = Roles(settings)
    try:
        yield r
    finally:
        r.stop_all()


def fleet_cli() -> list[str]:
    exe = shutil.which("fleet", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "fleet"]


@dataclass
class Canary:
    """Raw TCP server: counts connections at accept time, before any HTTP parsing."""

    port: int
    connections: int = 0
    requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    state = Canary(port=0)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            state.requests += 1
            body = b"<html><title>canary</title></html>"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()
