"""Fault injection: every URL must end indexed exactly once or dead-lettered.

kill -9 of a worker mid-run, kill -9 of the indexer mid-batch, nats-server restarted
mid-run (file storage), and SSRF inputs with a canary that must see zero connections.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from fleet.nats.server import EmbeddedNats
from fleet.settings import Settings
from tests.conftest import Roles, wait_for
from tests.pipeline_helpers import cli_json, drained, get_status, indexed_urls, write_urls
from tests.site import LoopbackSite

pytestmark = pytest.mark.fault


async def results_in_stream(settings: Settings) -> int:
    nc = await nats.connect(settings.nats_server)
    try:
        info = await nc.jetstream().stream_info(settings.results_stream)
        return info.state.messages
    finally:
        await nc.close()


async def worker_deliveries(settings: Settings) -> int:
    """Deliveries so far on the workers' consumer, redeliveries included (never goes down)."""
    nc = await nats.connect(settings.nats_server)
    try:
        info = await nc.jetstream().consumer_info(settings.urls_stream, "workers")
        assert info.delivered is not None
        return int(info.delivered.consumer_seq or 0)
    finally:
        await nc.close()


async def assert_each_once(settings: Settings, urls: list[str], dead: int = 0) -> None:
    async def done() -> bool:
        return len(indexed_urls(settings)) == len(urls) - dead and await drained(settings)

    await wait_for(done, timeout=120, interval=0.25)
    counts = indexed_urls(settings)
    assert set(counts.values()) == {1}
    assert set(counts) <= set(urls)
    st = await get_status(settings)
    assert st["dead_letters"] == dead
    # Dedup by Nats-Msg-Id: a URL redelivered after a crash does not publish a second result.
    assert await results_in_stream(settings) == len(urls) - dead


async def test_kill_9_worker_mid_run(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    urls = [site.url(f"/slow/{n}?s=0.2") for n in range(150)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
    victim = roles.start("worker", "--concurrency", "16")
    roles.start("indexer")

    async def mid_run() -> bool:
        # Some URLs done (acked: gone from the work queue), the victim holding un-acked ones
        # and more still waiting to be pulled: the kill cannot land after the last URL.
        workers = (await get_status(settings))["consumers"]["workers"]
        if not workers:
            return False
        pending, ack_pending = int(workers["pending"]), int(workers["ack_pending"])
        return len(urls) - pending - ack_pending >= 20 and ack_pending > 0 and pending > 0

    await wait_for(mid_run, timeout=60, interval=0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    roles.start("worker", "--concurrency", "16")
    await assert_each_once(settings, urls)
    # The URLs the victim held when it died were delivered again (to the new worker): more
    # deliveries than URLs, and still each URL indexed once (above).
    assert await worker_deliveries(settings) > len(urls)


async def test_kill_9_indexer_mid_batch(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    urls = [site.url(f"/page/{n}?b={n}") for n in range(300)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
    roles.start("worker", "--concurrency", "32")
    # Large, slow-to-fill batches: the kill lands while a batch is held un-acked.
    roles.env["FLEET_INDEXER_BATCH_SIZE"] = "50"
    roles.env["FLEET_INDEXER_BATCH_WAIT_S"] = "0.5"
    victim = roles.start("indexer")

    async def mid_batch() -> bool:
        st = await get_status(settings)
        return (
            bool(st["consumers"]["indexer"].get("ack_pending")) and len(indexed_urls(settings)) > 0
        )

    await wait_for(mid_batch, timeout=60, interval=0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    roles.start("indexer")
    await assert_each_once(settings, urls)


async def test_nats_server_restarted_mid_run(
    settings: Settings,
    nats_server: EmbeddedNats,
    site: LoopbackSite,
    roles: Roles,
    tmp_path: Path,
) -> None:
    urls = [site.url(f"/slow/{n}?s=0.05") for n in range(200)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
    roles.start("worker", "--concurrency", "8")
    roles.start("indexer")

    async def some_indexed() -> bool:
        return len(indexed_urls(settings)) >= 20

    await wait_for(some_indexed, timeout=60)
    await asyncio.to_thread(nats_server.restart, kill=True, down_s=1.0)
    await assert_each_once(settings, urls)


class ThreadCanary:
    """A TCP listener on loopback that counts every connection it is offered."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def thread_canary() -> Iterator[ThreadCanary]:
    c = ThreadCanary()
    try:
        yield c
    finally:
        c.close()


async def test_ssrf_inputs_are_dead_lettered_and_canary_sees_nothing(
    settings: Settings,
    site: LoopbackSite,
    roles: Roles,
    thread_canary: ThreadCanary,
    tmp_path: Path,
) -> None:
    canary = thread_canary
    port = canary.port
    blocked = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://127.1:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        # An allowed site redirecting to the canary: the hop is checked again.
        site.url(f"/redirect?to=http://127.0.0.1:{port}/secret"),
    ]
    ok = [site.url("/page/5")]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", blocked + ok)))
    roles.start("worker")
    roles.start("indexer")

    async def settled() -> bool:
        st = await get_status(settings)
        return st["dead_letters"] == len(blocked) and await drained(settings)

    await wait_for(settled, timeout=60)
    letters = cli_json(settings, "dlq", "list")
    assert {d["reason"] for d in letters} == {"blocked_address"}
    assert all(d["attempts"] == 1 for d in letters)
    assert list(indexed_urls(settings)) == ok
    assert canary.connections == 0


async def test_crash_on_the_last_attempt_is_dead_lettered_not_stranded(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    # max_deliver=2: the first attempt fails (503, nak), the worker is killed during the
    # second, the last. Every worker is then gone: the server will never deliver the URL
    # again, and the indexer's sweep must dead-letter it.
    settings = settings.replace(max_deliver=2, ack_wait_s=2.0, sweep_interval_s=0.5)
    roles.env.update(settings.to_env())
    url = site.url("/flaky-then-slow/1")
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", [url])))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    roles.start("indexer", "--metrics-port", str(metrics_port))
    victim = roles.start("worker")

    async def on_last_attempt() -> bool:
        return site.hits.get("/flaky-then-slow/1", 0) >= 2

    await wait_for(on_last_attempt, timeout=30)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    async def dead_lettered() -> bool:
        st = await get_status(settings)
        return bool(st["dead_letters"] == 1 and st["streams"]["urls"]["messages"] == 0)

    await wait_for(dead_lettered, timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        exposition = resp.read().decode()
    assert 'fleet_dead_letters_total{reason="max_deliveries",stage="worker"} 1.0' in exposition
    letters = cli_json(settings, "dlq", "list")
    assert [(d["url"], d["reason"], d["attempts"]) for d in letters] == [(url, "max_deliveries", 2)]
