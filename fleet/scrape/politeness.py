"""Fleet-wide politeness per origin (scheme + host + port): robots.txt, concurrency, delay.

The limiter state of an origin (``HostState``: next allowed start, leases of the requests
in flight, adaptive delay, pause) is shared by every worker of the fleet through the
``HostSlots`` Protocol, a compare-and-set over one record per origin; its JetStream KV
implementation lives in ``fleet/nats/hosts.py``. The maths is pure functions here
(``acquire``, ``release``), so it is tested without NATS.

* **Concurrency**: a grant records a lease that expires (fetch deadline + margin), so a
  worker killed with SIGKILL frees its slot when the lease runs out, not never.
* **Delay**: a grant moves the origin's ``next_at`` to now + delay; nobody in the fleet
  starts a request to it before then. robots.txt ``Crawl-delay`` (or ``Request-rate``)
  raises the delay, capped by ``host_delay_max_s``.
* **Adaptation**: a 429 or 503 with ``Retry-After`` pauses the origin until then; each 429
  or 503 doubles the delay (up to the cap), and each success takes a tenth of the base
  delay off again (additive decrease), so a server that pushed back is approached slowly.

The worker asks ``Politeness.admit(url)`` and gets ``Go`` (fetch now, then call ``done``),
``Skip`` (robots.txt disallows it) or ``Wait`` (not before ``until``). Waiting is the
worker's business (it parks the message or defers it through the stream), never a nak.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Final, Protocol, TypeVar

import msgspec

from fleet.messages import HostState
from fleet.scrape.robots import Robots, RobotsRules
from fleet.settings import HostRule, Settings
from fleet.urls import origin as origin_of

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_MARGIN_S: Final = 2.0  # a lease outlives the fetch deadline by this much
BUSY_POLL_S: Final = 0.05  # first re-check of an origin whose slots are all taken...
BUSY_POLL_MAX_S: Final = 1.0  # ...doubling up to this while it stays busy
CLAIM_WAIT_S: Final = 0.25  # another worker is fetching the robots.txt: ask again then
ERROR_WAIT_S: Final = 1.0  # shared state unreachable: URLs wait (fail closed)
ADAPT_STEP: Final = 0.1  # fraction of the base delay a success takes off an adapted delay
THROTTLE_STATUSES: Final = frozenset({429, 503})
PAUSE_MAX_S: Final = 3600.0
LOCAL_STATE_SIZE: Final = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one origin; 0 means no limit."""

    concurrency: int
    delay_s: float
    delay_max_s: float
    robots: bool

    @property
    def active(self) -> bool:
        """Whether the origin needs any shared state at all."""
        return self.concurrency > 0 or self.delay_s > 0

    def with_robots_delay(self, delay_s: float | None) -> Limits:
        """Raised by robots.txt's Crawl-delay (capped), never lowered by it."""
        if delay_s is None or delay_s <= self.delay_s:
            return self
        return replace(self, delay_s=min(delay_s, self.delay_max_s))


def limits_for(origin: str, settings: Settings, rules: tuple[HostRule, ...]) -> Limits:
    """The global limits, overridden by the first ``FLEET_HOST_RULES`` rule that matches."""
    concurrency, delay_s, robots = settings.host_concurrency, settings.host_delay_s, settings.robots
    host, port = _host_port(origin)
    for rule in rules:
        if rule.matches(host, port):
            concurrency = concurrency if rule.concurrency is None else rule.concurrency
            delay_s = delay_s if rule.delay_s is None else rule.delay_s
            robots = robots if rule.robots is None else rule.robots
            break
    return Limits(
        concurrency=concurrency,
        delay_s=min(delay_s, settings.host_delay_max_s),
        delay_max_s=settings.host_delay_max_s,
        robots=robots == "obey",
    )


def _host_port(origin: str) -> tuple[str, int]:
    rest = origin.split("://", 1)[1]
    host, _, port = rest.rpartition(":")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted request to ``origin`` (``id`` is recorded in the state when counted).

    ``short_until`` > 0: a short lease (see ``acquire``), counted until then unless the
    request outlives it and the lease is renewed.
    """

    origin: str
    id: str
    started_at: float
    short_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Go:
    """Fetch now; report the outcome with ``Politeness.done`` (None lease: no limits)."""

    lease: Lease | None
    limits: Limits


@dataclass(frozen=True, slots=True)
class Skip:
    """Not fetched on purpose (``reason`` robots), accounted for in the skipped stream."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Not before ``until`` (Unix time); ``why``: delay, busy, paused, robots, error."""

    until: float
    why: str


Admission = Go | Skip | Wait


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a granted request went: its HTTP status (None: no response) and Retry-After."""

    status: int | None = None
    retry_after_s: float | None = None


def effective_delay(state: HostState, limits: Limits) -> float:
    """The delay in force: the configured one, or the adapted one when it is higher."""
    if limits.delay_s <= 0:
        return 0.0
    return min(limits.delay_max_s, max(limits.delay_s, state.delay_s))


def acquire(
    state: HostState | None,
    origin: str,
    limits: Limits,
    *,
    now: float,
    lease_id: str,
    lease_ttl_s: float,
) -> tuple[HostState | None, Lease | Wait]:
    """Grant a request now, or say until when to wait. Returns (state to write or None, …).

    With a delay *d* and a concurrency *c*, a grant takes a **short lease** of *c* x *d*:
    starts are *d* apart, so short leases alone never fill the *c* slots, and a request
    that ends within its short lease needs no release write (one write per request, not
    two). A request still running halfway through it has its lease renewed to the full
    ``lease_ttl_s`` (``renew``), and is released when it ends. Without a delay, every
    lease is a full one and is released.
    """
    st = state if state is not None else HostState(origin=origin)
    if st.paused_until > now:
        return None, Wait(st.paused_until, "paused")
    if st.next_at > now:
        return None, Wait(st.next_at, "delay")
    leases = {k: v for k, v in st.leases.items() if v > now}
    if limits.concurrency > 0 and len(leases) >= limits.concurrency:
        return None, Wait(now + BUSY_POLL_S, "busy")
    delay = effective_delay(st, limits)
    short_until = 0.0
    if limits.concurrency > 0:
        if delay > 0:
            short_until = now + delay * limits.concurrency
        leases[lease_id] = short_until or now + lease_ttl_s
    new = msgspec.structs.replace(
        st, leases=leases, next_at=now + delay if delay > 0 else st.next_at
    )
    return new, Lease(origin, lease_id, now, short_until)


def renew(state: HostState | None, lease: Lease, *, until: float, now: float) -> HostState | None:
    """A short lease whose request is still running becomes a full one (until ``until``)."""
    st = state if state is not None else HostState(origin=lease.origin)
    leases = {k: v for k, v in st.leases.items() if v > now}
    leases[lease.id] = until
    return msgspec.structs.replace(st, leases=leases)


def release(
    state: HostState | None,
    lease: Lease,
    outcome: Outcome,
    limits: Limits,
    *,
    now: float,
    renewed: bool = False,
) -> HostState | None:
    """The state after a granted request ended (None: nothing to write).

    A short lease that was not renewed is left to expire: nothing to write for it.
    """
    st = state if state is not None else HostState(origin=lease.origin)
    leases = dict(st.leases)
    if renewed or not lease.short_until:
        leases.pop(lease.id, None)
    delay_s, paused_until, throttled, next_at = (
        st.delay_s,
        st.paused_until,
        st.throttled,
        st.next_at,
    )
    if outcome.status in THROTTLE_STATUSES:
        throttled += 1
        if limits.delay_s > 0:
            delay_s = min(limits.delay_max_s, max(limits.delay_s, st.delay_s) * 2)
            next_at = max(next_at, now + delay_s)
        if outcome.retry_after_s is not None and outcome.retry_after_s > 0:
            paused_until = max(paused_until, now + min(outcome.retry_after_s, PAUSE_MAX_S))
    elif outcome.status is not None:
        throttled = 0
        if delay_s > limits.delay_s:
            delay_s -= max(limits.delay_s * ADAPT_STEP, 0.01)
        if delay_s <= limits.delay_s:
            delay_s = 0.0
    # Normally already so since the grant; not when the delay was learnt during the request
    # (the robots.txt fetch that brought a Crawl-delay).
    delay = effective_delay(st, limits)
    if delay > 0:
        next_at = max(next_at, lease.started_at + delay)
    new = msgspec.structs.replace(
        st,
        leases=leases,
        delay_s=delay_s,
        paused_until=paused_until,
        throttled=throttled,
        next_at=next_at,
    )
    if new == st and state is not None:
        return None
    # Written anyway: leave out the leases that ran out meanwhile.
    return msgspec.structs.replace(new, leases={k: v for k, v in leases.items() if v > now})


@dataclass(slots=True)
class _Renewal:
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    started: bool = False

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


class HostSlots(Protocol):
    """Fleet-wide limiter state, one ``HostState`` per origin, changed by compare-and-set.

    ``transact`` calls ``change`` with the current state (None: none yet) and writes the
    state it returns unless that is None, only if nobody wrote in between; otherwise it
    reads again and calls ``change`` again. It returns ``change``'s second value. ``change``
    may see a slightly old state when it writes nothing: the Waits it then returns are
    lower bounds, which is all a waiter needs.
    """

    async def transact(
        self, origin: str, change: Callable[[HostState | None], tuple[HostState | None, T]]
    ) -> T:
        """Apply ``change`` to the host's state atomically (retried on a concurrent write);
        ``change`` returns the new state (None: delete it) and the caller's result."""
        ...


class Politeness:
    """robots.txt verdicts and fleet-wide per-origin limits for one worker.

    ``robots`` is None when robots.txt is ignored everywhere (``FLEET_ROBOTS=ignore`` and
    no rule that obeys it).
    """

    def __init__(
        self,
        slots: HostSlots,
        robots: Robots | None,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._slots = slots
        self._robots = robots
        self._settings = settings
        self._rules = settings.host_rule_list
        self._clock = clock
        render_s = settings.render_timeout_s if settings.render != "never" else 0.0
        self._lease_ttl_s = settings.fetch_timeout_s + render_s + LEASE_MARGIN_S
        self._worker_id = secrets.token_hex(4)
        self._leases = 0
        self._limits: collections.OrderedDict[str, Limits] = collections.OrderedDict()
        # Local hints: no point asking the shared state about an origin before this time.
        self._not_before: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        self._delays: dict[str, float] = {}  # last delay seen in force, for estimates
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._renewals: dict[str, _Renewal] = {}

    @staticmethod
    def origin(url: str) -> str:
        """The unit of politeness of ``url``."""
        return origin_of(url)

    def limits(self, origin: str) -> Limits:
        """Configured limits of ``origin`` (before robots.txt raises the delay)."""
        limits = self._limits.get(origin)
        if limits is None:
            limits = limits_for(origin, self._settings, self._rules)
            self._limits[origin] = limits
            while len(self._limits) > LOCAL_STATE_SIZE:
                self._limits.popitem(last=False)
        return limits

    def interval_s(self, origin: str) -> float:
        """Expected time between two starts on ``origin`` (estimates for waiting URLs)."""
        delay = self._delays.get(origin, self.limits(origin).delay_s)
        limits = self.limits(origin)
        if delay > 0:
            return delay
        return BUSY_POLL_MAX_S / max(1, limits.concurrency) if limits.concurrency else 0.0

    def ready_at(self, origin: str) -> float:
        """The earliest time worth asking about ``origin`` again (from what this worker
        knows: its own last grant there, or the wait it was given)."""
        return max(self._not_before.get(origin, 0.0), self._clock())

    async def admit(self, url: str, origin: str | None = None) -> Admission:
        """May ``url`` be fetched now? Never raises: trouble with shared state is a Wait.

        ``origin``: ``Politeness.origin(url)`` when the caller has it already.
        """
        origin = origin or origin_of(url)
        now = self._clock()
        hint = self._not_before.get(origin, 0.0)
        if hint > now:
            return Wait(hint, "delay")
        try:
            async with self._lock(origin):
                return await self._admit(url, origin)
        except Exception as exc:
            log.warning("politeness state for %s unavailable (%s); its URLs wait", origin, exc)
            return self._wait(origin, Wait(self._clock() + ERROR_WAIT_S, "error"))

    async def done(self, go: Go, outcome: Outcome) -> None:
        """Report a granted request's outcome (frees its slot, adapts the delay)."""
        lease = go.lease
        if lease is None:
            return
        limits = go.limits
        renewal = self._renewals.pop(lease.id, None)
        renewed = False
        if renewal is not None:
            # Renewing (or renewed): the lease is a full one now, or may be.
            renewed = renewal.started
            renewal.cancel()
        try:
            await self._slots.transact(
                lease.origin,
                lambda st: (
                    release(st, lease, outcome, limits, now=self._clock(), renewed=renewed),
                    None,
                ),
            )
        except Exception as exc:  # the lease expires on its own
            log.warning("could not release the slot on %s: %s", lease.origin, exc)
        if outcome.status in THROTTLE_STATUSES:
            # Others in this worker learn the pause or the longer delay from the state.
            self._not_before.pop(lease.origin, None)

    async def _admit(self, url: str, origin: str) -> Admission:
        limits = self.limits(origin)
        if limits.robots and self._robots is not None:
            rules = await self._robots.lookup(origin)
            if rules is None:
                fetched = await self._fetch_robots(origin, limits)
                if isinstance(fetched, Wait):
                    return fetched
                rules = fetched
            if rules.unreachable:
                return self._wait(origin, Wait(rules.entry.expires_at, "robots"))
            if not rules.allowed(url):
                return Skip("robots", f"disallowed by {origin}/robots.txt")
            limits = limits.with_robots_delay(rules.delay_s)
        if not limits.active:
            return Go(None, limits)
        granted = await self._acquire(origin, limits)
        return granted if isinstance(granted, Wait) else Go(granted, limits)

    async def _acquire(self, origin: str, limits: Limits) -> Lease | Wait:
        self._leases += 1
        lease_id = f"{self._worker_id}.{self._leases}"

        def change(state: HostState | None) -> tuple[HostState | None, Lease | Wait]:
            if state is not None:
                self._delays[origin] = effective_delay(state, limits)
            return acquire(
                state,
                origin,
                limits,
                now=self._clock(),
                lease_id=lease_id,
                lease_ttl_s=self._lease_ttl_s,
            )

        result = await self._slots.transact(origin, change)
        if isinstance(result, Wait):
            return self._wait(origin, result)
        self._busy.pop(origin, None)
        if result.short_until:
            self._keep(result)
        delay = self._delays.get(origin, limits.delay_s)
        if delay > 0:
            self._not_before[origin] = result.started_at + delay
        else:
            self._not_before.pop(origin, None)
        return result

    async def _fetch_robots(self, origin: str, limits: Limits) -> RobotsRules | Wait:
        """Fetch the robots.txt (one worker of the fleet does, the others wait for it).

        The fetch is a request to the host like any other: it takes a slot when limits
        apply, and the delay robots.txt asks for counts from its start.
        """
        assert self._robots is not None
        if limits.active:
            granted = await self._acquire(origin, limits)
            if isinstance(granted, Wait):
                return granted
            lease = granted
        else:  # not recorded in the state: only its start time matters afterwards
            lease = Lease(origin, "robots", self._clock())
        outcome = Outcome()
        rules: RobotsRules | None = None
        try:
            rules = await self._robots.fetch(origin)
            if rules is None:  # another worker is fetching it
                return self._wait(origin, Wait(self._clock() + CLAIM_WAIT_S, "robots"))
            outcome = Outcome(status=rules.entry.http_status or None)
            return rules
        finally:
            after = limits.with_robots_delay(rules.delay_s if rules is not None else None)
            if after.active:
                await self.done(Go(lease, after), outcome)

    def _keep(self, lease: Lease) -> None:
        """Renew a short lease halfway through it if its request is still running then
        (a timer, not a task: most requests end long before and cancel it)."""
        renewal = _Renewal()
        halfway = max(0.0, (lease.short_until - lease.started_at) / 2)
        renewal.timer = asyncio.get_running_loop().call_later(
            halfway, self._renew_now, lease, renewal
        )
        self._renewals[lease.id] = renewal

    def _renew_now(self, lease: Lease, renewal: _Renewal) -> None:
        renewal.started = True
        renewal.task = asyncio.create_task(self._renew(lease))

    async def _renew(self, lease: Lease) -> None:
        until = self._clock() + self._lease_ttl_s
        try:
            await self._slots.transact(
                lease.origin,
                lambda st: (renew(st, lease, until=until, now=self._clock()), None),
            )
        except Exception as exc:  # counted until the short lease ends, then not
            log.warning("could not renew the slot on %s: %s", lease.origin, exc)

    def _wait(self, origin: str, wait: Wait) -> Wait:
        if wait.why == "busy":
            streak = self._busy.get(origin, 0)
            self._busy[origin] = streak + 1
            wait = Wait(wait.until + min(BUSY_POLL_MAX_S, BUSY_POLL_S * 2**streak), "busy")
        self._not_before[origin] = wait.until
        if len(self._not_before) > LOCAL_STATE_SIZE:
            self._prune()
        return wait

    def _prune(self) -> None:
        now = self._clock()
        for origin in [o for o, t in self._not_before.items() if t <= now]:
            self._not_before.pop(origin, None)
            self._busy.pop(origin, None)
            self._delays.pop(origin, None)

    @asynccontextmanager
    async def _lock(self, origin: str) -> AsyncIterator[None]:
        """One admission at a time per origin in this worker: the others then see its
        result locally instead of racing it through the shared state."""
        lock, users = self._locks.get(origin, (asyncio.Lock(), 0))
        self._locks[origin] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[origin]
            if users <= 1:
                del self._locks[origin]
            else:
                self._locks[origin] = (lock, users - 1)

    def waiting_origins(self) -> Iterator[str]:
        """Origins with a local wait hint still in the future (for metrics and tests)."""
        now = self._clock()
        return (o for o, t in self._not_before.items() if t > now)
