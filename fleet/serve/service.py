"""What `fleet serve` and `fleet mcp` do, written once: the HTTP routes, the MCP tools and
the dashboard all call this ``FleetService``, which calls the same functions as the CLI
(``fleet.admin``, ``fleet.publisher``, ``fleet.sinks``).

It owns the server's one NATS session (``NatsLink``: connect, topology, reconnect) and its
read-only sink. Neither has to be up for the server to start: each call that needs one
raises ``Unavailable`` (HTTP 503) with the reason, and the link retries in the background.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

import aiohttp
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from fleet import admin, crawl
from fleet.errors import ConfigError, FleetError
from fleet.nats.frontier import Frontier
from fleet.nats.session import connect
from fleet.nats.streams import ensure_topology
from fleet.publisher import Publisher, read_url_lines
from fleet.settings import Settings
from fleet.sinks import Sink, open_sink
from fleet.sinks.base import SearchFilters, SearchPage, StoredPage
from fleet.telemetry import Telemetry
from fleet.urls import normalize_url, url_id

log = logging.getLogger(__name__)

Role = Literal["admin", "read"]
T = TypeVar("T")

# The dashboard's chart: one sample a second, ten minutes kept.
SAMPLE_INTERVAL_S: Final = 1.0
HISTORY_SAMPLES: Final = 600
# Dead letters shown on the dashboard (the API lists more).
DASHBOARD_DEAD_LETTERS: Final = 50
# Crawls shown on the dashboard, newest first (the API lists them all).
DASHBOARD_CRAWLS: Final = 10
# Crawls are re-read when their event stream moved, and at least this often (a cancel from
# the CLI changes only the crawl's spec).
CRAWLS_REFRESH_S: Final = 10.0
SUPERVISOR_TIMEOUT_S: Final = 2.0


class Unavailable(FleetError):
    """A dependency (NATS, the sink, the supervisor) cannot serve this request now."""

    reason = "unavailable"


class BadCrawl(FleetError):
    """A crawl request the crawl functions refused (a bad seed, scope or limit): HTTP 422."""

    reason = "bad_crawl"


class Forbidden(FleetError):
    """The caller's key does not allow this (the read-only key on a write)."""

    reason = "forbidden"


# --------------------------------------------------------------------------------------
# Keys


def key_role(settings: Settings, authorization: str | None) -> Role | None:
    """Which key an ``Authorization: Bearer KEY`` header carries (constant-time compares);
    None for no key or a wrong one. Without FLEET_API_KEY every caller is admin."""
    if not settings.api_key:
        return "admin"
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    given = token.encode()
    # Both compares always run, so the timing does not tell which key was close.
    is_admin = hmac.compare_digest(given, settings.api_key.encode())
    is_read = bool(settings.api_read_key) and hmac.compare_digest(
        given, (settings.api_read_key or "").encode()
    )
    if is_admin:
        return "admin"
    return "read" if is_read else None


def require_admin(settings: Settings, headers: Mapping[str, str] | None) -> None:
    """Raise ``Forbidden`` unless the request carries the full key. ``headers`` None means
    no HTTP request at all (`fleet mcp` on stdio, started by the user): allowed."""
    if headers is None:
        return
    if key_role(settings, headers.get("authorization")) != "admin":
        raise Forbidden(
            "this needs FLEET_API_KEY; the read-only key (FLEET_API_READ_KEY) allows "
            "search, pages and status only"
        )


# --------------------------------------------------------------------------------------
# NATS


class NatsLink:
    """The one NATS session of the server: `fleet.nats.session.connect` then
    `ensure_topology`, retried until it works; afterwards nats-py reconnects by itself."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = "not connected yet"

    @property
    def client(self) -> NATS | None:
        """The NATS connection, or None before the first one succeeded."""
        return self._nc

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting first if needed; ``Unavailable`` if NATS is not
        reachable (the message names the URL, never its credentials)."""
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        async with self._lock:
            if self._js is None or self._nc is None or self._nc.is_closed:
                await self._connect()
        assert self._js is not None
        return self._js

    async def _connect(self) -> None:
        # The only place that opens the session: swap for a shared session helper here.
        try:
            nc = await connect(self._settings, name="fleet-serve", reconnect=True)
        except FleetError as exc:
            self.last_error = str(exc)
            raise Unavailable(str(exc)) from None
        try:
            js = nc.jetstream(publish_async_max_pending=2048)
            await ensure_topology(js, self._settings)
        except FleetError as exc:
            await nc.close()
            self.last_error = str(exc)
            raise Unavailable(str(exc)) from None
        except Exception as exc:
            await nc.close()
            self.last_error = f"NATS: {type(exc).__name__}: {exc}"
            raise Unavailable(self.last_error) from None
        self._nc, self._js, self.last_error = nc, js, None
        log.info("connected to NATS")

    async def close(self) -> None:
        """Drain the connection if it is open, and forget it."""
        if self._nc is not None and not self._nc.is_closed:
            try:
                # Bounded: a drain stuck on a reconnecting link must not hold the exit.
                await asyncio.wait_for(self._nc.drain(), timeout=self._settings.drain_timeout_s)
            except Exception as exc:
                log.warning("NATS drain did not finish (%s); closing", type(exc).__name__)
                with contextlib.suppress(Exception):
                    await self._nc.close()
        self._nc = self._js = None


# --------------------------------------------------------------------------------------
# The dashboard's samples


@dataclasses.dataclass(frozen=True)
class Sample:
    """One point of the dashboard's history: pages extracted and worker lag at ``at``."""

    at: float
    pages: int  # last sequence of the results stream: pages extracted so far
    lag: int  # workers' pending + ack pending


@dataclasses.dataclass
class Snapshot:
    """What the dashboard shows, refreshed by one background task (not per viewer)."""

    status: dict[str, Any] | None = None
    status_error: str | None = "not sampled yet"
    dead_letters: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    crawls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    supervisor: dict[str, Any] | None = None
    updated_at: float = 0.0


# --------------------------------------------------------------------------------------
# The service


class FleetService:
    """Everything the API, the MCP tools and the dashboard can do."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry.disabled("serve")
        self.nats = NatsLink(settings)
        self._sink: Sink | None = None
        self._sink_lock = asyncio.Lock()
        self.sink_error: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self.snapshot = Snapshot()
        self.history: collections.deque[Sample] = collections.deque(maxlen=HISTORY_SAMPLES)
        self._dlq_mark: tuple[int, int] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._frontier: Frontier | None = None
        self._frontier_nc: NATS | None = None
        self._crawls_mark: int | None = None
        self._crawls_read_at = 0.0

    # -- life cycle

    async def start(self, *, sample: bool = True) -> None:
        """Connect what can be connected now; the rest is retried on use (and by the sampler)."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        with contextlib.suppress(Unavailable):
            await self.nats.jetstream()
        with contextlib.suppress(Unavailable):
            await self.sink()
        if sample:
            self._sampler = asyncio.create_task(self._sample_forever(), name="fleet-serve-sampler")

    async def close(self) -> None:
        """Stop the sampler, then close NATS, the sink and the HTTP session."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._frontier is not None:
            await self._frontier.close()
            self._frontier = None
        await self.nats.close()
        if self._sink is not None:
            await self._sink.close()
            self._sink = None
        if self._http is not None:
            await self._http.close()

    # -- the sink

    async def sink(self) -> Sink:
        """The read-only sink, opened on first use (the indexer may create it later)."""
        if self._sink is not None:
            return self._sink
        async with self._sink_lock:
            if self._sink is None:
                store = open_sink(self.settings)
                try:
                    await store.open(readonly=True)
                except FleetError as exc:
                    await store.close()
                    self.sink_error = str(exc)
                    raise Unavailable(str(exc)) from None
                self._sink, self.sink_error = store, None
        return self._sink

    async def search(
        self, query: str, *, limit: int, offset: int = 0, filters: SearchFilters | None = None
    ) -> SearchPage:
        """One page of hits from the sink; ``Unavailable`` when the sink cannot answer."""
        sink = await self.sink()
        try:
            return await sink.search_page(
                query, limit, offset=offset, filters=filters or SearchFilters()
            )
        except ConfigError as exc:
            raise Unavailable(str(exc)) from None

    async def page(self, page_id: str) -> StoredPage | None:
        """The stored page with this id, or None; ``Unavailable`` when the sink cannot answer."""
        sink = await self.sink()
        try:
            return await sink.get(page_id)
        except ConfigError as exc:
            raise Unavailable(str(exc)) from None

    async def page_by_url(self, url: str) -> StoredPage | None:
        """Pages are filed under their canonical URL's id; raises InvalidUrl for a bad URL."""
        return await self.page(url_id(normalize_url(url)))

    # -- NATS: status, dead letters, publishing

    async def status(self) -> dict[str, Any]:
        """Exactly what `fleet status --json` prints."""
        js = await self.nats.jetstream()
        try:
            return await admin.status(js, self.settings)
        except FleetError:
            raise
        except Exception as exc:
            raise Unavailable(f"NATS: {type(exc).__name__}: {exc}") from None

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        """What `fleet dlq list --json` prints."""
        js = await self.nats.jetstream()
        try:
            letters = await admin.list_dead_letters(js, self.settings, limit=limit)
        except Exception as exc:
            raise Unavailable(f"NATS: {type(exc).__name__}: {exc}") from None
        return [d.as_dict() for d in letters]

    async def replay(self, reason: str | None) -> dict[str, int]:
        """What `fleet dlq replay --json` prints."""
        js = await self.nats.jetstream()
        try:
            count = await admin.replay_dead_letters(js, self.settings, reason=reason)
        except Exception as exc:
            raise Unavailable(f"NATS: {type(exc).__name__}: {exc}") from None
        self._dlq_mark = None  # the dashboard re-reads the list
        return {"replayed": count}

    async def publish(self, lines: Iterable[str], *, source: str = "api") -> dict[str, Any]:
        """What `fleet publish --json` prints, plus ``errors`` (line and reason of each
        invalid line, which the CLI writes on stderr) when some were invalid."""
        js = await self.nats.jetstream()
        errors: list[dict[str, Any]] = []

        def invalid(lineno: int, reason: str) -> None:
            errors.append({"line": lineno, "reason": reason})

        publisher = Publisher(
            js,
            self.settings,
            headers_for=self.telemetry.publish_headers(self.settings.urls_subject),
            counted=self.telemetry.published,
        )
        report = await publisher.publish_urls(
            read_url_lines(lines), on_invalid=invalid, source=source
        )
        out: dict[str, Any] = report.as_dict()
        if errors:
            out["errors"] = errors
        return out

    # -- crawls: the functions of `fleet crawl start|list|status|cancel`

    async def frontier(self) -> Frontier:
        """The crawl state on the server's NATS session (a new one after a new session)."""
        js = await self.nats.jetstream()
        nc = self.nats.client
        assert nc is not None
        if self._frontier is None or self._frontier_nc is not nc:
            if self._frontier is not None:
                await self._frontier.close()
            self._frontier, self._frontier_nc = Frontier(nc, js, self.settings), nc
        return self._frontier

    async def _crawl_call(self, call: Callable[[Frontier], Awaitable[T]]) -> T:
        """Run ``call(frontier)``: CrawlNotFound passes through (404), other ConfigErrors
        of the crawl functions are ``BadCrawl`` (422), NATS failures ``Unavailable``."""
        frontier = await self.frontier()
        try:
            return await call(frontier)
        except crawl.CrawlNotFound:
            raise
        except ConfigError as exc:
            raise BadCrawl(str(exc)) from None
        except FleetError:
            raise
        except Exception as exc:
            raise Unavailable(f"NATS: {type(exc).__name__}: {exc}") from None

    async def start_crawl(self, options: crawl.CrawlOptions) -> dict[str, Any]:
        """What `fleet crawl start --json` prints."""
        spec = await self._crawl_call(lambda f: crawl.start_crawl(f, options))
        return crawl.started_view(spec)

    async def crawls(self) -> list[dict[str, Any]]:
        """What `fleet crawl list --json` prints: every crawl, oldest first."""
        return await self._crawl_call(crawl.list_crawls)

    async def crawl_status(self, key: str) -> dict[str, Any]:
        """What `fleet crawl status ID --json` prints (ID: an id or a name)."""
        return await self._crawl_call(lambda f: crawl.crawl_status(f, key))

    async def cancel_crawl(self, key: str) -> dict[str, Any]:
        """What `fleet crawl cancel ID --json` prints."""
        spec = await self._crawl_call(lambda f: crawl.cancel_crawl(f, key))
        self._crawls_mark = None  # the dashboard re-reads the crawls
        return crawl.cancelled_view(spec)

    async def recent_crawls(self, limit: int) -> list[dict[str, Any]]:
        """The status of the newest ``limit`` crawls, newest first (the dashboard)."""

        async def newest(frontier: Frontier) -> list[dict[str, Any]]:
            specs = (await frontier.specs())[-limit:][::-1]
            return [crawl.status_view(s, await crawl.read_counts(frontier, s.id)) for s in specs]

        return await self._crawl_call(newest)

    # -- the supervisor

    async def supervisor(self) -> dict[str, Any] | None:
        """The supervisor's /health and /workers (None when FLEET_SUPERVISOR_URL is unset)."""
        base = self.settings.supervisor_url
        if not base or self._http is None:
            return None
        base = base.rstrip("/")
        out: dict[str, Any] = {"url": base, "ok": False, "error": None}
        try:
            async with asyncio.timeout(SUPERVISOR_TIMEOUT_S):
                async with self._http.get(f"{base}/health") as resp:
                    body = await resp.json(content_type=None)
                    out["ok"] = resp.status == 200
                out["health"] = body if isinstance(body, dict) else {}
                async with self._http.get(f"{base}/workers") as resp:
                    workers = await resp.json(content_type=None)
                out["workers"] = workers if isinstance(workers, list) else []
        except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return out

    # -- the sampler (dashboard)

    async def _sample_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sample()
            except Exception as exc:  # never let the dashboard's loop die
                log.warning("dashboard sample failed: %s", exc)
            await asyncio.sleep(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - started)))

    async def sample(self) -> None:
        """One refresh of the dashboard's snapshot and chart history."""
        snap = self.snapshot
        try:
            status = await self.status()
        except FleetError as exc:
            snap.status_error = str(exc)
        else:
            snap.status, snap.status_error = status, None
            results = status["streams"].get("results") or {}
            workers = status["consumers"].get("workers") or {}
            self.history.append(
                Sample(
                    at=time.time(),
                    pages=int(results.get("last_seq", 0)),
                    lag=int(workers.get("pending", 0)) + int(workers.get("ack_pending", 0)),
                )
            )
            dlq = status["streams"].get("dlq") or {}
            mark = (int(dlq.get("messages", 0)), int(dlq.get("last_seq", 0)))
            if mark != self._dlq_mark:  # read the dead letters only when they changed
                with contextlib.suppress(FleetError):
                    snap.dead_letters = await self.dead_letters(DASHBOARD_DEAD_LETTERS)
                    self._dlq_mark = mark
            with contextlib.suppress(FleetError):
                await self._sample_crawls()
        snap.supervisor = await self.supervisor()
        snap.updated_at = time.time()

    async def _sample_crawls(self) -> None:
        """Re-read the newest crawls when the crawl event stream moved (one stream_info a
        second rather than listing every crawl's spec and counters)."""
        js = await self.nats.jetstream()
        try:
            mark = int((await js.stream_info(self.settings.crawl_stream)).state.last_seq)
        except Exception:  # not created yet (no crawl ever), or NATS trouble
            mark = None
        stale = time.monotonic() - self._crawls_read_at > CRAWLS_REFRESH_S
        if mark is None or (mark == self._crawls_mark and not stale):
            return
        self.snapshot.crawls = await self.recent_crawls(DASHBOARD_CRAWLS)
        self._crawls_mark, self._crawls_read_at = mark, time.monotonic()

    def rates(self) -> list[dict[str, float]]:
        """Pages per second between consecutive samples (the dashboard's chart)."""
        samples = list(self.history)
        out: list[dict[str, float]] = []
        for before, after in itertools.pairwise(samples):
            span = after.at - before.at
            if span <= 0:
                continue
            pages = max(0, after.pages - before.pages)  # a reset stream is not negative
            out.append({"at": round(after.at, 3), "pages_per_s": round(pages / span, 2)})
        return out

    def dashboard(self) -> dict[str, Any]:
        """The dashboard's JSON: the latest snapshot, the chart and whether keys are on."""
        snap = self.snapshot
        return {
            "updated_at": snap.updated_at,
            "status": snap.status,
            "status_error": snap.status_error,
            "dead_letters": snap.dead_letters,
            "crawls": snap.crawls,
            "supervisor": snap.supervisor,
            "rates": self.rates(),
            "auth": {"required": bool(self.settings.api_key)},
        }
