"""robots.txt (RFC 9309): fetch once per origin for the whole fleet, cache, answer verdicts.

Pure parts (what a response means, what the rules say about a URL) are functions and small
classes here; the shared cache reaches this module through the ``RobotsCache`` Protocol,
whose JetStream KV implementation lives in ``fleet/nats/hosts.py``. Parsing is protego's
(the parser Scrapy uses), for the product token of the fleet's User-Agent.

RFC 9309 in brief, as applied here:

* 2xx: the rules apply (the first 500 KiB; the rest is ignored, not an error);
* 4xx (other than 429), or more than ``max_redirects`` redirects: "unavailable", everything
  is allowed;
* 5xx, 429, timeouts, network errors: "unreachable", everything is disallowed for now and
  the file is fetched again later (``robots_retry_s``, doubling up to an hour). URLs of the
  origin wait meanwhile; none is dropped;
* redirects are followed (the fetcher's ``max_redirects``, 5 by default), through the same
  SSRF guard as pages.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from protego import Protego

from fleet.errors import FleetError, PermanentError, TooManyRedirects
from fleet.messages import RobotsEntry
from fleet.scrape.fetch import FetchResult, GuardedRequesting
from fleet.settings import Settings
from fleet.urls import normalize_url

log = logging.getLogger(__name__)

ROBOTS_MAX_BYTES: Final = 500 * 1024  # RFC 9309 2.5: parse at least 500 KiB
ROBOTS_RETRY_MAX_S: Final = 3600.0
LOCAL_CACHE_SIZE: Final = 10_000
ROBOTS_HEADERS: Final = {"Accept": "text/plain, */*;q=0.5"}


class RobotsCache(Protocol):
    """Fleet-wide robots.txt store, one entry per origin, plus a short fetch claim so that
    one worker fetches a file while the others wait for it."""

    async def get(self, origin: str) -> RobotsEntry | None:
        """The cached entry of ``origin``, or None when there is none (or it expired)."""
        ...

    async def put(self, entry: RobotsEntry, ttl_s: float) -> None:
        """Store ``entry`` for every worker, for ``ttl_s``."""
        ...

    async def claim(self, origin: str, ttl_s: float) -> bool:
        """Take the right to fetch ``origin``'s robots.txt; False if another worker has it."""
        ...

    async def unclaim(self, origin: str) -> None:
        """Give the fetch claim back (after a put, or when the fetch failed)."""
        ...


def robots_url(origin: str) -> str:
    """The robots.txt URL of ``scheme://host:port``."""
    return normalize_url(origin + "/robots.txt")


def retry_after_failures(base_s: float, failures: int) -> float:
    """Wait before fetching an unreachable robots.txt again: doubles, capped at an hour."""
    growth: int = 2 ** min(20, max(0, failures - 1))
    return min(ROBOTS_RETRY_MAX_S, base_s * growth)


def entry_from_response(
    origin: str,
    result: FetchResult,
    *,
    now: float,
    ttl_s: float,
    retry_s: float,
    failures: int = 0,
) -> RobotsEntry:
    """What a robots.txt response means (``failures``: unreachable fetches before it)."""
    status = result.status
    if 200 <= status < 300:
        body = result.body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
        rules = Protego.parse(body)
        return RobotsEntry(
            origin=origin,
            status="ok",
            fetched_at=now,
            expires_at=now + ttl_s,
            http_status=status,
            body=body,
            sitemaps=list(rules.sitemaps),
        )
    if status == 429 or status >= 500:
        return _unreachable(
            origin, f"HTTP {status}", now=now, retry_s=retry_s, failures=failures, status=status
        )
    # 4xx, and a 3xx that is not followed (no Location): RFC 9309 "unavailable".
    return RobotsEntry(
        origin=origin,
        status="unavailable",
        fetched_at=now,
        expires_at=now + ttl_s,
        http_status=status,
    )


def entry_from_error(
    origin: str,
    error: BaseException,
    *,
    now: float,
    ttl_s: float,
    retry_s: float,
    failures: int = 0,
) -> RobotsEntry:
    """What a failed robots.txt fetch means.

    Too many redirects: unavailable (RFC 9309 2.3.1.2). Any other permanent error (blocked
    address, bad redirect): unavailable too, since the page fetch fails the same way on its
    own. Anything transient (timeout, network, DNS): unreachable, retried later.
    """
    if isinstance(error, TooManyRedirects | PermanentError):
        return RobotsEntry(
            origin=origin,
            status="unavailable",
            fetched_at=now,
            expires_at=now + ttl_s,
            error=str(error)[:500],
        )
    reason = error.reason if isinstance(error, FleetError) else type(error).__name__
    return _unreachable(
        origin, f"{reason}: {error}"[:500], now=now, retry_s=retry_s, failures=failures, status=0
    )


def _unreachable(
    origin: str, error: str, *, now: float, retry_s: float, failures: int, status: int
) -> RobotsEntry:
    failures += 1
    return RobotsEntry(
        origin=origin,
        status="unreachable",
        fetched_at=now,
        expires_at=now + retry_after_failures(retry_s, failures),
        http_status=status,
        error=error,
        failures=failures,
    )


class RobotsRules:
    """The verdicts of one origin's robots.txt for one user agent."""

    def __init__(self, entry: RobotsEntry, user_agent: str) -> None:
        self.entry = entry
        self._user_agent = user_agent
        self._parsed = Protego.parse(entry.body) if entry.status == "ok" else None

    @property
    def unreachable(self) -> bool:
        """Nothing may be fetched until ``entry.expires_at`` (the file is fetched again)."""
        return self.entry.status == "unreachable"

    def allowed(self, url: str) -> bool:
        """May ``url`` be fetched? (An unreachable robots.txt disallows everything.)"""
        if self.entry.status == "unavailable":
            return True
        if self._parsed is None:
            return False
        return bool(self._parsed.can_fetch(url, self._user_agent))

    @property
    def delay_s(self) -> float | None:
        """The delay the file asks for: Crawl-delay, or Request-rate as seconds per request."""
        if self._parsed is None:
            return None
        delays: list[float] = []
        crawl_delay = self._parsed.crawl_delay(self._user_agent)
        if crawl_delay is not None:
            delays.append(float(crawl_delay))
        rate = self._parsed.request_rate(self._user_agent)
        if rate is not None and rate.requests > 0:
            delays.append(rate.seconds / rate.requests)
        return max(delays) if delays else None


@dataclass(frozen=True, slots=True)
class RobotsWait:
    """The origin's robots.txt is unknown right now: ask again at ``until``."""

    until: float
    why: str


class Robots:
    """robots.txt of every origin: a local LRU in front of the fleet-wide cache.

    ``lookup`` never fetches; ``fetch`` does (the caller holds the origin's slot and the
    fleet-wide claim, see ``fleet.scrape.politeness``).
    """

    def __init__(
        self,
        cache: RobotsCache,
        fetcher: GuardedRequesting,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._fetcher = fetcher
        self._settings = settings
        self._clock = clock
        self._local: collections.OrderedDict[str, RobotsRules] = collections.OrderedDict()

    async def lookup(self, origin: str) -> RobotsRules | None:
        """The rules in force for ``origin``, or None when they must be fetched (again)."""
        now = self._clock()
        rules = self._local.get(origin)
        if rules is not None and rules.entry.expires_at > now:
            self._local.move_to_end(origin)
            return rules
        entry = await self._cache.get(origin)
        if entry is None:
            return None
        rules = self._remember(entry)
        # Expired: fetched again; the old entry stays known for its failure count.
        return rules if entry.expires_at > now else None

    async def fetch(self, origin: str) -> RobotsRules | None:
        """Fetch ``origin``'s robots.txt, store it fleet-wide, return its rules; None when
        another worker of the fleet is fetching it right now (ask ``lookup`` again soon)."""
        if not await self._cache.claim(origin, ttl_s=self._settings.fetch_timeout_s + 5.0):
            return None
        try:
            # Another worker may have stored it between our lookup and our claim.
            entry = await self._cache.get(origin)
            if entry is not None and entry.expires_at > self._clock():
                return self._remember(entry)
            return await self._fetch(origin)
        finally:
            try:
                await self._cache.unclaim(origin)
            except Exception as exc:  # the claim expires on its own
                log.debug("could not drop the robots.txt claim on %s: %s", origin, exc)

    async def _fetch(self, origin: str) -> RobotsRules:
        s = self._settings
        now = self._clock()
        previous = self._local.get(origin)
        failures = previous.entry.failures if previous is not None else 0
        try:
            result = await self._fetcher.request(
                robots_url(origin),
                headers=ROBOTS_HEADERS,
                http_errors="return",
                max_bytes=ROBOTS_MAX_BYTES,
                oversize="truncate",
            )
        except Exception as exc:
            entry = entry_from_error(
                origin,
                exc,
                now=now,
                ttl_s=s.robots_ttl_s,
                retry_s=s.robots_retry_s,
                failures=failures,
            )
        else:
            entry = entry_from_response(
                origin,
                result,
                now=now,
                ttl_s=s.robots_ttl_s,
                retry_s=s.robots_retry_s,
                failures=failures,
            )
        if entry.status == "unreachable":
            log.warning(
                "robots.txt of %s unreachable (%s): its URLs wait until %s",
                origin,
                entry.error,
                time.strftime("%H:%M:%S", time.localtime(entry.expires_at)),
            )
        try:
            # The KV copy outlives its use a little, so the failure count survives a refetch.
            await self._cache.put(entry, ttl_s=max(1.0, entry.expires_at - now) + 3600.0)
        except Exception as exc:  # the local copy still serves this worker
            log.warning("could not store robots.txt of %s: %s", origin, exc)
        return self._remember(entry)

    def _remember(self, entry: RobotsEntry) -> RobotsRules:
        known = self._local.get(entry.origin)
        if known is not None and known.entry == entry:
            return known
        rules = RobotsRules(entry, self._settings.user_agent)
        delay = rules.delay_s
        if delay is not None and delay > self._settings.host_delay_max_s:
            log.warning(
                "robots.txt of %s asks for a delay of %gs; capped at %gs (FLEET_HOST_DELAY_MAX_S)",
                entry.origin,
                delay,
                self._settings.host_delay_max_s,
            )
        self._local[entry.origin] = rules
        self._local.move_to_end(entry.origin)
        while len(self._local) > LOCAL_CACHE_SIZE:
            self._local.popitem(last=False)
        return rules
