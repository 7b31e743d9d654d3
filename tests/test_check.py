"""`fleet check ROLE`: the healthcheck behind every container, against a real nats-server."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import nats

from fleet.check import check
from fleet.nats.server import EmbeddedNats, find_nats_server
from fleet.nats.streams import ensure_topology
from fleet.settings import Settings
from fleet.sinks import open_sink
from tests.conftest import fleet_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _create_topology(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_server)
    try:
        await ensure_topology(nc.jetstream(), settings)
    finally:
        await nc.close()


async def test_roles_unhealthy_until_topology_exists(settings: Settings) -> None:
    assert (await check("nats", settings)).ok
    for role in ("publisher", "worker", "indexer"):
        result = await check(role, settings)
        assert not result.ok
        assert "stream FLEET_URLS is missing" in result.detail
    await _create_topology(settings)
    for role in ("nats", "publisher", "worker"):
        result = await check(role, settings)
        assert result.ok, result.line()
    # The indexer creates its SQLite database; until then its check names the sink.
    result = await check("indexer", settings)
    assert not result.ok
    assert result.detail.startswith("sink: ")
    store = open_sink(settings)
    await store.open()
    await store.close()
    assert (await check("indexer", settings)).ok
    worker = await check("worker", settings)
    assert "consumer workers" in worker.detail
    indexer = await check("indexer", settings)
    assert "consumer indexer" in indexer.detail
    assert "sink SqliteSink" in indexer.detail or "documents" in indexer.detail


async def test_missing_consumer_is_named(settings: Settings) -> None:
    await _create_topology(settings)
    nc = await nats.connect(settings.nats_server)
    try:
        await nc.jetstream().delete_consumer(settings.results_stream, "indexer")
    finally:
        await nc.close()
    assert (await check("worker", settings)).ok
    result = await check("indexer", settings)
    assert not result.ok
    assert result.detail == f"consumer indexer on {settings.results_stream} is missing"


async def test_unreachable_nats_and_sink(settings: Settings) -> None:
    down = settings.replace(nats_url=f"nats://127.0.0.1:{_free_port()}", nats_connect_timeout_s=1.0)
    result = await check("worker", down)
    assert not result.ok
    assert "cannot reach NATS" in result.detail
    await _create_topology(settings)
    no_meili = settings.replace(sink=f"http://127.0.0.1:{_free_port()}")
    result = await check("indexer", no_meili)
    assert not result.ok
    assert result.detail.startswith("sink: cannot reach Meilisearch")
    assert (await check("worker", no_meili)).ok


async def test_no_jetstream() -> None:
    port = _free_port()
    proc = subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(port)])
    try:
        settings = Settings(nats_url=f"nats://127.0.0.1:{port}")
        for _ in range(50):
            result = await check("nats", settings)
            if "cannot reach" not in result.detail:
                break
        assert not result.ok
        assert "has no JetStream" in result.detail
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_exit_codes(settings: Settings, nats_server: EmbeddedNats) -> None:
    env = {**os.environ, **settings.to_env()}
    env.pop("FLEET_ROLE", None)
    bad = subprocess.run(
        [*fleet_cli(), "check", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("unhealthy: worker: stream FLEET_URLS is missing")
    ok = subprocess.run(
        [*fleet_cli(), "check", "--json"],
        env={**env, "FLEET_ROLE": "nats"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    usage = subprocess.run(
        [*fleet_cli(), "check", "nonsense"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2
