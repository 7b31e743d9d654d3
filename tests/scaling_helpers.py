"""Helpers shared by the supervisor tests of every backend: a burst of URLs, timed scaling."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Sequence

import nats

from fleet.nats.streams import ensure_topology
from fleet.publisher import Publisher
from fleet.scaling.base import Backend
from fleet.settings import Settings
from fleet.supervisor import JetStreamLag, Policy, Supervisor
from tests.conftest import wait_for
from tests.pipeline_helpers import get_status

BURST = 2_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class ScaleRun:
    to_max_s: float  # end of the burst's publish → max replicas
    drain_s: float  # end of publish → workers' consumer empty
    to_min_s: float  # drained → min replicas
    scaled_down_with_lag: bool  # a worker was stopped while URLs were still in flight
    timeline: list[tuple[float, int, int]]  # (t, replicas, lag)
    published_at: float = 0.0  # time.monotonic() at the end of the burst's publish

    def assert_promised(self, settings: Settings, label: str) -> None:
        """The issue's promise: max within two intervals, min within cooldown + two."""
        print(
            f"\n{label}: max in {self.to_max_s:.1f}s, drained in {self.drain_s:.1f}s, "
            f"min {self.to_min_s:.1f}s after the drain, "
            f"scale-down with lag: {self.scaled_down_with_lag}"
        )
        interval, cooldown = settings.supervisor_interval_s, settings.supervisor_cooldown_s
        assert self.to_max_s <= 2 * interval, self.timeline[:30]
        assert self.to_min_s <= cooldown + 2 * interval, self.timeline[-30:]


async def workers_lag(settings: Settings) -> int:
    view = (await get_status(settings))["consumers"]["workers"]
    return int(view["pending"] + view["ack_pending"]) if view else 0


async def publish(settings: Settings, urls: Sequence[str]) -> None:
    nc = await nats.connect(settings.nats_server)
    try:
        js = nc.jetstream(publish_async_max_pending=2048)
        await ensure_topology(js, settings)
        report = await Publisher(js, settings).publish_urls(
            enumerate(urls, start=1), on_invalid=lambda n, r: None
        )
        assert report.published == len(urls)
    finally:
        await nc.drain()


async def burst_scenario(
    settings: Settings,
    backend: Backend,
    policy: Policy,
    urls: Sequence[str],
    *,
    interval_s: float,
    drain_timeout_s: float = 120.0,
) -> ScaleRun:
    """Run the supervisor over `backend`, publish `urls` at once, and time the scaling."""
    lag = JetStreamLag(settings)
    sup = Supervisor(policy, lag, backend, interval_s=interval_s)
    stop = asyncio.Event()
    loop = asyncio.create_task(sup.run(stop))
    timeline: list[tuple[float, int, int]] = []
    try:

        async def count() -> int:
            return len(await backend.replicas())

        async def at_min() -> bool:
            return await count() == policy.min_replicas

        await wait_for(at_min, timeout=30)
        await publish(settings, urls)
        t0 = time.monotonic()
        to_max = drained_at = None
        scaled_down_with_lag = False
        peak = 0
        while time.monotonic() - t0 < drain_timeout_s:
            n, current_lag = await count(), await workers_lag(settings)
            t = time.monotonic() - t0
            timeline.append((round(t, 2), n, current_lag))
            if n == policy.max_replicas and to_max is None:
                to_max = t
            if n < peak and current_lag > 0:
                scaled_down_with_lag = True
            peak = max(peak, n)
            if current_lag == 0 and drained_at is None:
                drained_at = t
            if drained_at is not None and n == policy.min_replicas:
                break
            await asyncio.sleep(0.1)
        assert to_max is not None, f"never reached {policy.max_replicas}: {timeline}"
        assert drained_at is not None, f"not drained: {timeline[-5:]}"
        assert timeline[-1][1] == policy.min_replicas, f"never back to min: {timeline[-5:]}"
        return ScaleRun(
            to_max_s=to_max,
            drain_s=drained_at,
            to_min_s=timeline[-1][0] - drained_at,
            scaled_down_with_lag=scaled_down_with_lag,
            timeline=timeline,
            published_at=t0,
        )
    finally:
        stop.set()
        await loop
        await lag.close()
