"""The supervisor's policy (a pure function) and its control loop with fake lag/backends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleet.scaling.base import BackendError, Replica, WorkerStats
from fleet.settings import Settings
from fleet.supervisor import (
    ConsumerMissing,
    Decision,
    Policy,
    PolicyState,
    Supervisor,
    decide,
    hold,
    make_app,
)

POLICY = Policy(
    min_replicas=1, max_replicas=8, target_lag=100, activation_lag=1, max_step=4, cooldown_s=10
)


def replay(
    policy: Policy, lags: Sequence[int], *, start: int, interval: float = 1.0
) -> list[Decision]:
    """Feed a lag history, one observation per interval; the backend does as told."""
    state, current, out = PolicyState(), start, []
    for i, lag in enumerate(lags):
        decision, state = decide(policy, state, now=i * interval, lag=lag, current=current)
        out.append(decision)
        current = decision.desired
    return out


def desired(decisions: Sequence[Decision]) -> list[int]:
    return [d.desired for d in decisions]


@pytest.mark.parametrize(
    ("lag", "wanted"),
    [(0, 1), (1, 1), (100, 1), (101, 2), (450, 5), (800, 8), (10_000, 8)],
)
def test_wanted_is_clamped_ceil_of_lag_over_target(lag: int, wanted: int) -> None:
    assert POLICY.wanted(lag) == wanted


@pytest.mark.parametrize(
    ("name", "policy", "start", "lags", "expected"),
    [
        # A burst: up at once, but at most max_step per decision.
        ("burst, bounded step", POLICY, 1, [2000, 2000, 2000], [5, 8, 8]),
        # Growing lag: one step per observation.
        ("ramp", POLICY, 1, [50, 150, 250, 350], [1, 2, 3, 4]),
        # Drained: nothing for the cooldown (10 s), then down (step-bounded) to min.
        ("drain waits for cooldown", POLICY, 8, [0] * 14, [8] * 10 + [4, 1, 1, 1]),
        # Flapping lag never removes workers: the window still holds the high value.
        ("flapping", POLICY, 1, [800, 0] * 8, [5, 5, 8, 8] + [8] * 12),
        # Idle fleet at min=0: stays at 0 below the activation lag, then wakes up.
        (
            "activation from zero",
            Policy(min_replicas=0, max_replicas=4, target_lag=100, activation_lag=50, cooldown_s=5),
            0,
            [0, 10, 49, 50, 50],
            [0, 0, 0, 1, 1],
        ),
        # Back to zero only once the last high lag (t=0) is a cooldown (3 s) old.
        (
            "back to zero",
            Policy(min_replicas=0, max_replicas=4, target_lag=100, activation_lag=50, cooldown_s=3),
            2,
            [120, 10, 10, 10, 10, 10],
            [2, 2, 2, 0, 0, 0],
        ),
        # Above max (scaled by hand): back under the ceiling at once, step-bounded.
        ("above max", POLICY, 13, [2000, 2000, 2000], [9, 8, 8]),
        # Below min (a worker crashed or was removed by hand): up at once.
        ("below min", Policy(min_replicas=2, max_replicas=4, target_lag=100), 0, [0], [2]),
    ],
)
def test_decisions(
    name: str, policy: Policy, start: int, lags: list[int], expected: list[int]
) -> None:
    assert desired(replay(policy, lags, start=start)) == expected, name


def test_scale_down_goes_to_highest_wanted_over_the_window() -> None:
    # 8 workers; the lag falls to 350 (4 wanted) then 0: after the cooldown the fleet goes
    # to 4 first (the window still holds "4"), and to 1 only once that left the window.
    lags = [350] * 12 + [0] * 12
    got = desired(replay(POLICY, lags, start=8))
    assert got[:10] == [8] * 10  # the supervisor just started: no scale-down yet
    assert got[10] == 4
    assert 4 in got and got[-1] == 1
    # Only once the last 350 (t=11) is a full cooldown (10 s) old.
    assert got.index(1) == 11 + 10


def test_new_burst_during_cooldown_cancels_scale_down() -> None:
    lags = [0] * 5 + [900] + [0] * 5
    got = desired(replay(POLICY, lags, start=4))
    assert got[:5] == [4] * 5
    assert got[5] == 8  # scaled up at once
    assert got[6:] == [8] * 5  # and not down again within the cooldown


def test_decision_says_why() -> None:
    decisions = replay(POLICY, [2000, 0], start=1)
    assert decisions[0].direction == "up"
    assert "step bounded" in decisions[0].reason
    assert decisions[1].direction is None and "cooldown" in decisions[1].reason
    assert decisions[0].as_dict()["lag"] == 2000


def test_policy_from_settings() -> None:
    s = Settings(supervisor_min=2, supervisor_max=5, supervisor_cooldown_s=7)
    p = Policy.from_settings(s)
    assert (p.min_replicas, p.max_replicas, p.cooldown_s, p.target_lag) == (2, 5, 7, 200)


# -- the loop, with fakes


class FakeLag:
    def __init__(self, *values: int | Exception) -> None:
        self.values = list(values)

    async def lag(self) -> int:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, Exception):
            raise value
        return value


class FakeBackend:
    name = "fake"

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.fail: Exception | None = None
        self.calls: list[int] = []

    async def ping(self) -> None:
        return None

    async def replicas(self) -> list[Replica]:
        if self.fail:
            raise self.fail
        return [Replica(str(i), f"w{i}", float(i), "running") for i in range(self.n)]

    async def scale_to(self, n: int) -> None:
        self.calls.append(n)
        self.n = n

    async def get_worker_stats(self) -> list[WorkerStats]:
        return [WorkerStats(str(i), f"w{i}", "running", 1.5, 1000) for i in range(self.n)]

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_outages_are_reported_and_retried() -> None:
    lag = FakeLag(OSError("nats down"), 500, 500)
    backend = FakeBackend(1)
    clock = Clock()
    sup = Supervisor(POLICY, lag, backend, interval_s=1, clock=clock)
    assert await sup.step() is None
    ok, body = sup.health()
    assert not ok and "nats down" in body["dependencies"]["nats"]["error"]
    backend.fail = BackendError("docker: list containers failed")
    assert await sup.step() is None
    ok, body = sup.health()
    assert not ok and body["dependencies"]["fake"]["error"].startswith("docker:")
    assert body["dependencies"]["nats"]["ok"]
    backend.fail = None
    decision = await sup.step()
    assert decision is not None and decision.desired == 5
    assert backend.calls == [5]
    assert sup.health()[0]
    text = sup.metrics.render()[0].decode()
    assert "fleet_supervisor_lag 500.0" in text
    assert "fleet_supervisor_replicas_desired 5.0" in text
    assert 'fleet_supervisor_scale_events_total{direction="up"} 1.0' in text
    assert 'fleet_supervisor_errors_total{dependency="nats"} 1.0' in text


async def test_http_health_metrics_workers() -> None:
    sup = Supervisor(POLICY, FakeLag(OSError("no nats")), FakeBackend(2), interval_s=1)
    async with TestClient(TestServer(make_app(sup))) as client:
        resp = await client.get("/health")
        assert resp.status == 503  # not checked yet
        await sup.step()
        resp = await client.get("/health")
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "unhealthy" and body["dependencies"]["nats"]["ok"] is False
        sup._lag = FakeLag(0)
        await sup.step()
        resp = await client.get("/health")
        assert resp.status == 200
        body = await resp.json()
        assert body["last_decision"]["current"] == 2
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert "fleet_supervisor_replicas_actual 2.0" in await resp.text()
        resp = await client.get("/workers")
        assert [w["name"] for w in await resp.json()] == ["w0", "w1"]


async def test_health_turns_unhealthy_when_the_loop_is_stuck() -> None:
    clock = Clock()
    sup = Supervisor(POLICY, FakeLag(0), FakeBackend(1), interval_s=5, clock=clock)
    await sup.step()
    assert sup.health()[0]
    clock.t += sup.stale_after_s + 1
    ok, body = sup.health()
    assert not ok and body["loop"]["ok"] is False and body["loop"]["ticks"] == 1


async def test_run_loop_stops_on_event() -> None:
    sup = Supervisor(POLICY, FakeLag(0), FakeBackend(1), interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert sup.ticks >= 3


# -- a lag that cannot be read: hold, never decide on it


@pytest.mark.parametrize(
    ("current", "desired", "reason"),
    [(3, 3, "holding 3"), (0, 1, "below min 1"), (9, 8, "above max 8"), (8, 8, "holding 8")],
)
def test_hold_keeps_the_count_within_bounds(current: int, desired: int, reason: str) -> None:
    decision = hold(POLICY, current=current, why="consumer gone")
    assert (decision.lag, decision.desired, decision.wanted) == (None, desired, desired)
    assert decision.reason == f"{reason}; lag unknown: consumer gone"


def missing() -> ConsumerMissing:
    return ConsumerMissing(
        "consumer workers on stream FLEET_URLS not found", stream="FLEET_URLS", consumer="workers"
    )


async def test_missing_consumer_holds_and_alerts_never_scales_to_max() -> None:
    lag = FakeLag(missing(), missing(), 250)
    backend = FakeBackend(3)
    sup = Supervisor(POLICY, lag, backend, interval_s=1, clock=Clock())
    for _ in range(2):
        decision = await sup.step()
        assert decision is not None and decision.desired == 3 and decision.direction is None
    assert backend.calls == []  # neither max (KEDA's fallback) nor zero
    ok, body = sup.health()
    assert ok and body["status"] == "degraded"
    assert [a["reason"] for a in body["alerts"]] == ["consumer_missing"]
    assert "not found" in body["alerts"][0]["message"]
    assert body["dependencies"]["nats"]["ok"]  # NATS answered; the consumer is what is missing
    assert body["last_decision"]["lag"] is None
    text = sup.metrics.render()[0].decode()
    assert 'fleet_supervisor_alert{reason="consumer_missing"} 1.0' in text
    assert 'fleet_supervisor_holds_total{reason="consumer_missing"} 2.0' in text
    # The consumer is back: the alert clears and the lag decides again.
    decision = await sup.step()
    assert decision is not None and decision.lag == 250 and decision.desired == 3
    ok, body = sup.health()
    assert ok and body["status"] == "ok" and body["alerts"] == []
    assert (
        'fleet_supervisor_alert{reason="consumer_missing"} 0.0' in sup.metrics.render()[0].decode()
    )


async def test_missing_consumer_below_min_still_starts_min_workers() -> None:
    # A fresh server: no consumer until a worker creates it, so min workers are started.
    backend = FakeBackend(0)
    sup = Supervisor(POLICY, FakeLag(missing()), backend, interval_s=1, clock=Clock())
    decision = await sup.step()
    assert decision is not None and decision.desired == 1
    assert backend.calls == [1]


async def test_a_failed_lag_read_holds_without_deciding() -> None:
    # min 0 and no cooldown: a failed read taken as lag 0 would stop every worker at once,
    # one taken as "unknown, assume the worst" would start max.
    policy = Policy(min_replicas=0, max_replicas=8, target_lag=100, cooldown_s=0)
    backend = FakeBackend(3)
    clock = Clock()
    sup = Supervisor(
        policy,
        FakeLag(300, TimeoutError(), TimeoutError(), 300),
        backend,
        interval_s=1,
        clock=clock,
    )
    results = []
    for _ in range(4):
        clock.t += 1
        results.append(await sup.step())
    assert [r.desired if r else None for r in results] == [3, None, None, 3]
    assert backend.calls == []
    assert (
        'fleet_supervisor_holds_total{reason="lag_unreadable"} 2.0'
        in sup.metrics.render()[0].decode()
    )
