"""`fleet supervisor`: keeps as many workers running as the queue needs.

Every interval it reads the lag of the workers' consumer (``num_pending`` +
``num_ack_pending``), asks the pure policy (`decide`) how many workers that needs, and has
a backend (`fleet/scaling/`: Docker containers or local processes) start or gracefully
stop workers. It scales up at once (at most ``max_step`` at a time) and down only when
the lag has stayed low for the whole cooldown: the stabilisation window of Kubernetes'
HPA and KEDA, which scale down to the highest recommendation seen over the window.

The lag is read from the consumer's info, which JetStream's API answers from the consumer's
leader (in a cluster, never a follower's stale copy). A read that fails (NATS down, the
leader being re-elected) holds the replica count: no decision is made on a lag not read. A
consumer that does not exist holds it too (only the min/max bounds apply) and raises the
``consumer_missing`` alert: ``/health`` says ``degraded``; it never scales to max.

HTTP: ``/health`` (NATS and the backend, as JSON; 503 when either is down), ``/metrics``
(Prometheus: `fleet.telemetry.metrics.SupervisorMetrics`) and ``/workers`` (each worker's
state, CPU and memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleet.errors import TransientError
from fleet.nats.session import nats_session
from fleet.nats.streams import WORKERS_CONSUMER
from fleet.scaling.base import Backend
from fleet.settings import Settings
from fleet.telemetry.metrics import SupervisorMetrics

log = logging.getLogger(__name__)

UP: Final = "up"
DOWN: Final = "down"


# --------------------------------------------------------------------------------------
# Policy (pure)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """How the supervisor scales: replica bounds, the lag one worker should carry, and how fast."""

    min_replicas: int
    max_replicas: int
    target_lag: int  # URLs one worker should carry
    activation_lag: int = 1  # below this the fleet is idle: min replicas (0 if min is 0)
    max_step: int = 4  # most workers added or removed by one decision
    cooldown_s: float = 60.0  # stabilisation window for scaling down

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy of the ``FLEET_SUPERVISOR_*`` settings."""
        return cls(
            min_replicas=settings.supervisor_min,
            max_replicas=settings.supervisor_max,
            target_lag=settings.supervisor_target_lag,
            activation_lag=settings.supervisor_activation_lag,
            max_step=settings.supervisor_max_step,
            cooldown_s=settings.supervisor_cooldown_s,
        )

    def wanted(self, lag: int) -> int:
        """Replicas this lag alone asks for: clamp(ceil(lag / target_lag), min, max)."""
        if lag < self.activation_lag:
            return self.min_replicas
        return max(self.min_replicas, min(self.max_replicas, math.ceil(lag / self.target_lag)))


@dataclasses.dataclass(frozen=True)
class PolicyState:
    """What `decide` remembers between calls: when it started, and the replicas wanted
    at each observation within the cooldown window."""

    started_at: float | None = None
    window: tuple[tuple[float, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Decision:
    """One scaling decision: the lag and replicas seen, what to run (``desired``), and why."""

    lag: int | None  # None: not read (the replicas were held)
    current: int
    wanted: int  # from this lag alone
    desired: int  # after step bound and stabilisation
    reason: str

    @property
    def direction(self) -> str | None:
        """``UP`` or ``DOWN``, or None when ``desired`` is the current count."""
        if self.desired > self.current:
            return UP
        if self.desired < self.current:
            return DOWN
        return None

    def as_dict(self) -> dict[str, Any]:
        """The decision and its direction, as ``/health`` shows it."""
        return {**dataclasses.asdict(self), "direction": self.direction}


def decide(
    policy: Policy, state: PolicyState, *, now: float, lag: int, current: int
) -> tuple[Decision, PolicyState]:
    """How many workers to run now. Pure: the same inputs always give the same answer."""
    started = now if state.started_at is None else state.started_at
    wanted = policy.wanted(lag)
    window = (*((t, w) for t, w in state.window if t > now - policy.cooldown_s), (now, wanted))
    new_state = PolicyState(started, window)

    def out(desired: int, reason: str) -> tuple[Decision, PolicyState]:
        return Decision(lag, current, wanted, desired, reason), new_state

    if wanted > current:
        desired = min(wanted, current + policy.max_step)
        if current < policy.min_replicas:
            reason = f"below min {policy.min_replicas}"
        elif current == 0:
            reason = f"activation: lag {lag} >= {policy.activation_lag}"
        else:
            reason = f"lag {lag} > {current} x target {policy.target_lag}"
        if desired < wanted:
            reason += f" (step bounded to +{policy.max_step})"
        return out(desired, reason)
    if wanted == current:
        return out(current, "steady")
    if current > policy.max_replicas:
        # Max is a ceiling (cost, quotas), not a preference: no stabilisation above it.
        return out(
            max(policy.max_replicas, current - policy.max_step), f"above max {policy.max_replicas}"
        )
    # Scale down only to the highest count wanted over the whole window, and only once the
    # window covers a full cooldown: a short dip in the lag must not remove workers.
    if now - started < policy.cooldown_s:
        return out(current, f"cooldown: started {now - started:.0f}s ago")
    stable = max(w for _, w in window)
    if stable >= current:
        return out(current, f"cooldown: {stable} wanted within {policy.cooldown_s:g}s")
    desired = max(stable, current - policy.max_step)
    reason = f"lag low for {policy.cooldown_s:g}s (max wanted {stable})"
    if desired > stable:
        reason += f" (step bounded to -{policy.max_step})"
    return out(desired, reason)


def hold(policy: Policy, *, current: int, why: str) -> Decision:
    """The decision when the lag is unknown: keep ``current``, only brought within min..max.

    Pure. The bounds are configuration, not lag: a fleet below its minimum still gets its
    workers (they create the consumer when it is missing), one above its maximum is cut.
    """
    desired = min(max(current, policy.min_replicas), policy.max_replicas)
    if desired > current:
        reason = f"below min {policy.min_replicas}"
    elif desired < current:
        reason = f"above max {policy.max_replicas}"
    else:
        reason = f"holding {current}"
    return Decision(None, current, desired, desired, f"{reason}; lag unknown: {why}")


# --------------------------------------------------------------------------------------
# Lag


class ConsumerMissing(TransientError):
    """The workers' consumer (or its stream) does not exist, so there is no lag to read.

    Deleted by hand, or not created yet (every role but the supervisor creates it when it
    starts). The supervisor holds the replica count and raises an alert.
    """

    reason = "consumer_missing"

    def __init__(self, message: str, *, stream: str, consumer: str) -> None:
        super().__init__(message)
        self.stream = stream
        self.consumer = consumer


class LagSource(Protocol):
    """Where the supervisor reads the queue's lag (``JetStreamLag``; tests give their own)."""

    async def lag(self) -> int:
        """pending + ack_pending of the workers' consumer.

        Raises ``ConsumerMissing`` when the consumer does not exist, anything else when the
        lag cannot be read now (the supervisor then holds the replica count either way).
        """


class JetStreamLag:
    """Lag of the `workers` consumer read from JetStream, connecting lazily so a NATS outage
    at start-up is reported (and retried) rather than fatal.

    The consumer info request (``$JS.API.CONSUMER.INFO``) is answered by the consumer's
    leader: in a cluster the followers stay silent, so the lag is never a follower's copy
    (KEDA's ``/jsz`` read can be). While a new leader is elected nobody answers: the read
    times out and the supervisor holds. ``leader`` is the leader of the last answer.

    ``num_ack_pending`` includes URLs nak'ed with a retry delay until they are delivered
    again, so URLs waiting for a retry keep counting (for at most ``backoff_max_s``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        js: JetStreamContext | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._settings = settings
        self._js = js  # given: a connection owned by the caller (fleet run)
        self._session = contextlib.AsyncExitStack()  # else the one opened here
        self._timeout_s = timeout_s
        self.leader: str | None = None

    async def lag(self) -> int:
        """``num_pending + num_ack_pending`` of the workers' consumer, from its leader.

        Connects on the first call. Raises ``ConsumerMissing`` when the consumer (or its
        stream) does not exist; anything else when NATS is unreachable or nobody answers within
        ``timeout_s`` (a leader election); the supervisor then asks again next interval.
        """
        if self._js is None:
            session = await self._session.enter_async_context(
                nats_session(self._settings, name="fleet-supervisor", topology=False, drain=False)
            )
            self._js = session.js
        stream = self._settings.urls_stream
        try:
            async with asyncio.timeout(self._timeout_s):
                info = await self._js.consumer_info(stream, WORKERS_CONSUMER)
        except NotFoundError as exc:
            raise ConsumerMissing(
                f"consumer {WORKERS_CONSUMER} on stream {stream} not found "
                f"({exc.description or 'not found'}); the next worker or `fleet publish` to "
                "start creates it",
                stream=stream,
                consumer=WORKERS_CONSUMER,
            ) from None
        leader = info.cluster.leader if info.cluster else None
        if leader != self.leader:
            if self.leader is not None:
                log.info("workers' consumer leader is now %s (was %s)", leader, self.leader)
            self.leader = leader
        return int((info.num_pending or 0) + (info.num_ack_pending or 0))

    async def close(self) -> None:
        """Close the connection opened here, if any (a ``js`` given is the caller's)."""
        await self._session.aclose()


# --------------------------------------------------------------------------------------
# The control loop


@dataclasses.dataclass
class DependencyStatus:
    """One dependency as ``/health`` shows it: ok, the last error, when checked (Unix time)."""

    ok: bool = False
    error: str | None = "not checked yet"
    checked_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Alert:
    """A condition an operator must fix, raised while it lasts: ``/health`` is ``degraded``."""

    reason: str
    message: str
    since: float  # Unix time

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


class Supervisor:
    """One decision per interval: lag → policy → backend. Never raises for an outage: the
    failing dependency is logged, shown by /health, and tried again next interval.

    No decision is made on a lag that was not read: a failed read holds the replica count,
    and a missing consumer holds it too (within min..max, see `hold`) and raises an alert.
    """

    def __init__(
        self,
        policy: Policy,
        lag_source: LagSource,
        backend: Backend,
        *,
        interval_s: float,
        metrics: SupervisorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._lag = lag_source
        self.backend = backend
        self.interval_s = interval_s
        self.metrics = metrics or SupervisorMetrics()
        self._clock = clock
        self._state = PolicyState()
        self.last: Decision | None = None
        self.nats = DependencyStatus()
        self.docker = DependencyStatus()
        self.alerts: dict[str, Alert] = {}
        self.ticks = 0
        self._last_tick: float | None = None
        # A loop stuck in a call (docker-py's timeout is 60 s) must show in /health.
        self.stale_after_s = max(90.0, 5 * interval_s)

    def _mark(self, dep: DependencyStatus, name: str, error: Exception | None) -> None:
        dep.checked_at = time.time()
        dep.ok, dep.error = error is None, None if error is None else str(error) or repr(error)
        self.metrics.up.labels(name).set(1 if error is None else 0)
        if error is not None:
            self.metrics.errors.labels(name).inc()

    def _raise_alert(self, reason: str, message: str) -> None:
        if reason not in self.alerts:
            log.warning("ALERT %s: %s", reason, message)
        else:
            log.debug("alert %s still raised: %s", reason, message)
        since = self.alerts[reason].since if reason in self.alerts else time.time()
        self.alerts[reason] = Alert(reason, message, since)
        self.metrics.alert.labels(reason).set(1)

    def _clear_alert(self, reason: str) -> None:
        alert = self.alerts.pop(reason, None)
        if alert is not None:
            log.info("alert %s cleared after %.0fs", reason, time.time() - alert.since)
            self.metrics.alert.labels(reason).set(0)

    async def step(self) -> Decision | None:
        """One tick. Returns the decision, or None when a dependency failed."""
        try:
            return await self._step()
        finally:
            self.ticks += 1
            self._last_tick = self._clock()

    async def _current(self) -> int | None:
        try:
            return len(await self.backend.replicas())
        except Exception as exc:
            self._mark(self.docker, "backend", exc)
            log.warning("cannot list workers (%s); retrying in %gs", exc, self.interval_s)
            return None

    async def _step(self) -> Decision | None:
        try:
            lag = await self._lag.lag()
        except ConsumerMissing as exc:
            self._mark(self.nats, "nats", None)  # NATS answered: the consumer is not there
            self.metrics.holds.labels(exc.reason).inc()
            self._raise_alert(exc.reason, f"{exc}; holding the replica count")
            current = await self._current()
            if current is None:
                return None
            return await self._apply(hold(self.policy, current=current, why=str(exc)))
        except Exception as exc:
            # Not answered (NATS down, the consumer's leader being elected): no decision.
            self._mark(self.nats, "nats", exc)
            self.metrics.holds.labels("lag_unreadable").inc()
            log.warning(
                "cannot read the workers' lag (%s); holding, retrying in %gs",
                str(exc) or type(exc).__name__,
                self.interval_s,
            )
            return None
        self._mark(self.nats, "nats", None)
        self._clear_alert(ConsumerMissing.reason)
        current = await self._current()
        if current is None:
            return None
        decision, self._state = decide(
            self.policy, self._state, now=self._clock(), lag=lag, current=current
        )
        self.metrics.lag.set(lag)
        return await self._apply(decision)

    async def _apply(self, decision: Decision) -> Decision:
        """Record ``decision`` and have the backend carry it out."""
        self.last = decision
        m = self.metrics
        m.actual.set(decision.current)
        m.wanted.set(decision.wanted)
        m.desired.set(decision.desired)
        level = logging.INFO if decision.direction else logging.DEBUG
        log.log(
            level,
            "scale decision lag=%s current=%d wanted=%d desired=%d direction=%s reason=%r",
            "unknown" if decision.lag is None else decision.lag,
            decision.current,
            decision.wanted,
            decision.desired,
            decision.direction or "none",
            decision.reason,
        )
        if decision.direction is None:
            self._mark(self.docker, "backend", None)
            return decision
        try:
            await self.backend.scale_to(decision.desired)
        except Exception as exc:
            self._mark(self.docker, "backend", exc)
            log.warning("scaling to %d failed (%s); retrying next interval", decision.desired, exc)
            return decision
        self._mark(self.docker, "backend", None)
        m.events.labels(decision.direction).inc()
        m.actual.set(decision.desired)
        return decision

    async def run(self, stop: asyncio.Event) -> None:
        """``step`` every ``interval_s`` (start to start) until ``stop`` is set."""
        while not stop.is_set():
            started = self._clock()
            await self.step()
            delay = max(0.0, self.interval_s - (self._clock() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy or not, and the ``/health`` body.

        Healthy when NATS and the backend answered at their last check and the loop has ticked
        within ``stale_after_s`` (a loop stuck in a call is unhealthy too). Healthy with an
        alert raised (a missing consumer) is ``degraded``: still 200, the alerts say why.
        """
        idle = None if self._last_tick is None else self._clock() - self._last_tick
        loop_ok = idle is not None and idle <= self.stale_after_s
        ok = self.nats.ok and self.docker.ok and loop_ok
        status = "unhealthy" if not ok else "degraded" if self.alerts else "ok"
        return ok, {
            "status": status,
            "alerts": [a.as_dict() for a in self.alerts.values()],
            "loop": {
                "ok": loop_ok,
                "ticks": self.ticks,
                "seconds_since_tick": None if idle is None else round(idle, 1),
            },
            "backend": self.backend.name,
            "dependencies": {
                "nats": self.nats.as_dict(),
                self.backend.name: self.docker.as_dict(),
            },
            "last_decision": self.last.as_dict() if self.last else None,
            "policy": dataclasses.asdict(self.policy),
        }


# --------------------------------------------------------------------------------------
# HTTP


def make_app(supervisor: Supervisor) -> web.Application:
    """The aiohttp app: ``/health`` (503 when unhealthy), ``/metrics``, ``/workers``."""

    async def health(_: web.Request) -> web.Response:
        ok, body = supervisor.health()
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        data, content_type = supervisor.metrics.render()
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def workers(_: web.Request) -> web.Response:
        try:
            stats = await supervisor.backend.get_worker_stats()
        except Exception as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response([s.as_dict() for s in stats])

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/workers", workers)
    return app


async def serve(
    supervisor: Supervisor,
    stop: asyncio.Event,
    *,
    port: int,
    host: str = "0.0.0.0",  # noqa: S104
) -> None:
    """Run the loop and the HTTP endpoints until `stop`; then finish stops under way."""
    runner = web.AppRunner(make_app(supervisor), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info(
        "supervisor (%s backend) on %s:%d: /health /metrics /workers; policy %s",
        supervisor.backend.name,
        host,
        port,
        supervisor.policy,
    )
    try:
        await supervisor.run(stop)
    finally:
        await runner.cleanup()
