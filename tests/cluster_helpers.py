"""A three-node JetStream cluster of real nats-server processes on loopback, for the tests.

Each node is an `EmbeddedNats` with its own store, client and monitoring ports (picked by
the server, read back from its log, kept across restarts) and a cluster port: those must be
known before any node starts (every node routes to all three), so they are picked from
free ports just before the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from fleet.errors import ConfigError
from fleet.nats.server import EmbeddedNats


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class NatsCluster:
    """``size`` JetStream servers named n1..nN in one cluster; ``seeds`` is the seed list."""

    def __init__(
        self, root: Path, size: int = 3, *, tags: Sequence[Sequence[str]] | None = None
    ) -> None:
        self.root = root
        self.size = size
        self._tags = tags or [() for _ in range(size)]
        self.nodes: dict[str, EmbeddedNats] = {}

    def start(self) -> NatsCluster:
        """Start every node, then wait until the cluster has a meta leader and all its peers.

        Cluster ports are picked free just before the start, so another process may take
        one meanwhile: a cluster that does not form is started again once, on new ports and
        new stores (the first attempt's logs are printed).
        """
        try:
            return self._start(self.root, timeout_s=30.0)
        except (AssertionError, ConfigError) as exc:
            print(f"NatsCluster: first start failed, retrying on new ports: {exc}")
            self.close()
            return self._start(self.root / "retry", timeout_s=60.0)

    def _start(self, root: Path, *, timeout_s: float) -> NatsCluster:
        ports = _free_ports(self.size)
        routes = [f"nats://127.0.0.1:{p}" for p in ports]
        for i, port in enumerate(ports):
            name = f"n{i + 1}"
            store = root / name
            store.mkdir(parents=True, exist_ok=True)
            self.nodes[name] = EmbeddedNats(
                str(store),
                server_name=name,
                cluster_name="fleet-test",
                cluster_port=port,
                routes=routes,
                tags=self._tags[i],
                monitor_port=-1,
            ).start()
        self.wait_formed(timeout_s)
        return self

    def close(self) -> None:
        """Stop every node (the stores are under ``root``, a test's tmp_path)."""
        for node in self.nodes.values():
            node.stop(kill=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def seeds(self) -> str:
        """Every node's client URL, comma-separated: the value of FLEET_NATS_URL."""
        return ",".join(node.url for node in self.nodes.values())

    def name_of(self, url: str) -> str:
        """The node whose client URL is ``url``."""
        return next(n for n, node in self.nodes.items() if node.url == url)

    def monitor(self, name: str, path: str) -> Any:
        """GET ``path`` of node ``name``'s monitoring endpoint, as JSON."""
        url = self.nodes[name].monitor_url + path
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def meta_leader(self, name: str) -> str | None:
        """The meta leader node ``name`` knows of, or None (no leader, or not answering)."""
        try:
            meta = self.monitor(name, "/jsz").get("meta_cluster") or {}
        except OSError:
            return None
        return meta.get("leader") if meta.get("cluster_size") == self.size else None

    def wait_formed(self, timeout_s: float = 60.0) -> None:
        """Until every running node sees the same meta leader of a cluster of ``size``."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [n for n, node in self.nodes.items() if node.pid is not None]
            leaders = {self.meta_leader(n) for n in running}
            if len(leaders) == 1 and None not in leaders:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}:\n{self.nodes[n].log_tail(15)}" for n in running)
                raise AssertionError(f"cluster not formed within {timeout_s}s: {leaders}\n{logs}")
            time.sleep(0.2)

    def connection_names(self, name: str) -> list[str]:
        """Names of the clients connected to node ``name`` (``fleet-worker``...)."""
        conns = self.monitor(name, "/connz?limit=1024").get("connections") or []
        return [str(c.get("name") or "") for c in conns]

    def kill(self, name: str) -> float:
        """SIGKILL node ``name``; returns the monotonic time of the kill."""
        self.nodes[name].stop(kill=True)
        return time.monotonic()

    def freeze(self, name: str) -> float:
        """SIGSTOP node ``name``: its connections stay open but nothing answers (a machine
        lost or cut off, not a crash); returns the monotonic time."""
        pid = self.nodes[name].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        return time.monotonic()

    def thaw(self, name: str) -> None:
        """SIGCONT a frozen node."""
        pid = self.nodes[name].pid
        assert pid is not None
        os.kill(pid, signal.SIGCONT)

    def restart(self, name: str) -> None:
        """Start node ``name`` again on its ports with its store; it rejoins the cluster."""
        self.nodes[name].start()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[NATS]:
        """A connection given the whole seed list that reconnects for ever."""
        nc = await nats.connect(
            servers=[node.url for node in self.nodes.values()],
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=1,
        )
        try:
            yield nc
        finally:
            await nc.close()


async def stream_leader(nc: NATS, stream: str) -> str:
    """The node leading ``stream`` (waits out an election)."""
    return await _leader(nc, f"$JS.API.STREAM.INFO.{stream}")


async def consumer_leader(nc: NATS, stream: str, consumer: str) -> str:
    """The node leading ``consumer`` of ``stream`` (waits out an election)."""
    return await _leader(nc, f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")


async def _leader(nc: NATS, subject: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            reply = json.loads((await nc.request(subject, b"", timeout=1)).data)
            leader = (reply.get("cluster") or {}).get("leader")
            if leader:
                return str(leader)
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader for {subject} within {timeout_s}s")
        await asyncio.sleep(0.2)


async def move_stream_leader(nc: NATS, stream: str, to: str) -> None:
    """Make node ``to`` the leader of ``stream``."""
    await _move(nc, f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", to)


async def move_consumer_leader(nc: NATS, stream: str, consumer: str, to: str) -> None:
    """Make node ``to`` the leader of ``consumer`` of ``stream``."""
    await _move(
        nc,
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}",
        to,
    )


async def _move(nc: NATS, info: str, stepdown: str, to: str) -> None:
    # A leader steps down in favour of a preferred peer (nats-server 2.11+).
    for _ in range(10):
        if await _leader(nc, info) == to:
            return
        body = json.dumps({"placement": {"preferred": to}}).encode()
        with contextlib.suppress(Exception):
            await nc.request(stepdown, body, timeout=5)
        await asyncio.sleep(0.5)
    raise AssertionError(f"{info}: leadership did not move to {to}")
