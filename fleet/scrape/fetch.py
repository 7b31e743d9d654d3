"""Async HTTP fetch: one shared aiohttp session, SSRF-guarded, bounded in time and size.

Every failure leaves as a ``fleet.errors`` exception so the worker can decide between
retrying (TransientError) and dead-lettering (PermanentError) without knowing aiohttp.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Literal, NoReturn, Protocol, Self
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver

from fleet.errors import (
    BodyTooLarge,
    FleetError,
    HttpStatusError,
    InvalidUrl,
    PermanentError,
    TooManyRedirects,
    TransientError,
    UnsupportedContent,
)
from fleet.scrape.netguard import GuardedResolver, HostPolicy, check_url
from fleet.settings import Settings
from fleet.urls import normalize_url

ACCEPTED_CONTENT_TYPES: Final = frozenset({"text/html", "application/xhtml+xml", "text/plain"})
ACCEPT_HEADER: Final = "text/html,application/xhtml+xml;q=0.9,text/plain;q=0.8"
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
RETRY_AFTER_CAP_S: Final = 3600.0
# Small bodies of redirects and error pages are read so the connection can be reused;
# anything bigger is cheaper to drop with the connection.
_DRAIN_LIMIT: Final = 64 * 1024
_DRAIN_TIMEOUT_S: Final = 1.0  # a slow error body must not turn an HTTP 503 into a timeout
_DNS_CACHE_TTL_S: Final = 60


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One fetched response: the URL asked, the one that answered after redirects, and the body.

    The body is decoded from its Content-Encoding and at most ``max_body_bytes``;
    ``elapsed_ms`` covers the whole redirect chain.
    """

    url: str
    final_url: str
    status: int
    content_type: str
    charset: str | None
    body: bytes
    elapsed_ms: float
    redirects: int
    # The last response's headers, names lowercased (``Fetcher.request`` callers pass them
    # on; the page path does not need them).
    headers: Mapping[str, str] = field(default_factory=dict)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or HTTP-date), clamped to [0, 1 h]."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # "-0000" dates: RFC 9110 dates are UTC
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


class GuardedRequesting(Protocol):
    """``Fetcher.request`` as its other users (the browser's proxy, robots.txt and sitemap
    reads) depend on it: the one guarded fetch."""

    async def request(
        self,
        url: str,
        *,
        accept: frozenset[str] | None = None,
        headers: Mapping[str, str] | None = None,
        http_errors: Literal["raise", "return"] = "return",
        follow_redirects: bool = True,
        max_bytes: int | None = None,
        oversize: Literal["raise", "truncate"] = "raise",
    ) -> FetchResult:
        """Fetch ``url`` through the SSRF guard, with the body cap and deadline.

        ``http_errors="raise"`` makes a non-2xx an ``HttpStatusError``; ``follow_redirects=False``
        returns a redirect as it is; ``oversize="truncate"`` cuts a body past ``max_bytes``
        instead of failing. Raises ``BlockedAddress``/``InvalidUrl`` for a refused URL, another
        ``FleetError`` when the fetch fails.
        """
        ...


class Fetcher:
    """Fetch pages over one pooled session; use as ``async with Fetcher(settings) as f``."""

    def __init__(self, settings: Settings, *, resolver: AbstractResolver | None = None) -> None:
        """``resolver`` is the inner resolver GuardedResolver wraps (default: aiohttp's);
        tests pass a stub so host names never reach real DNS."""
        self._settings = settings
        self._inner_resolver = resolver
        self._policy = HostPolicy(settings.allow_hosts)
        self._max_redirects = settings.max_redirects
        self._max_body = settings.max_body_bytes
        self._deadline_s = settings.fetch_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

    @property
    def policy(self) -> HostPolicy:
        """The ``FLEET_ALLOW_HOSTS`` exemptions this fetcher checks addresses against."""
        return self._policy

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp wants a running loop, __init__ may run before one exists.
        if self._session is None:
            s = self._settings
            self._resolver = GuardedResolver(self._policy, self._inner_resolver)
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
                # One connection per in-flight fetch (hops release theirs before the next);
                # headroom so waiting for a pool slot never eats the connect timeout.
                limit=max(16, 2 * s.worker_concurrency),
                use_dns_cache=True,  # safe: only GuardedResolver's checked answers get cached
                ttl_dns_cache=_DNS_CACHE_TTL_S,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=s.fetch_timeout_s,
                    connect=s.connect_timeout_s,
                    sock_connect=s.connect_timeout_s,
                ),
                headers={"User-Agent": s.user_agent, "Accept": ACCEPT_HEADER},
                auto_decompress=True,
                trust_env=False,  # an env proxy would bypass the address checks
                cookie_jar=aiohttp.DummyCookieJar(),  # no state shared between sites
                read_bufsize=2**17,
            )
        return self._session

    async def close(self) -> None:
        """Close the session and its resolver; a later fetch opens new ones."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await resolver.close()

    async def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> FetchResult:
        """Fetch a page: follow redirects, accept only HTML/text, raise a fleet error on
        any failure, HTTP error statuses included.

        Crawls pass ``headers`` (conditional ``If-None-Match``/``If-Modified-Since``: a 304
        is then returned, with no body) and ``follow_redirects=False`` (a redirect is then
        returned with its ``location`` header, for the crawl to queue the target once).
        """
        return await self.request(
            url,
            accept=ACCEPTED_CONTENT_TYPES,
            headers=headers,
            http_errors="raise",
            follow_redirects=follow_redirects,
        )

    async def request(
        self,
        url: str,
        *,
        accept: frozenset[str] | None = None,
        headers: Mapping[str, str] | None = None,
        http_errors: Literal["raise", "return"] = "return",
        follow_redirects: bool = True,
        max_bytes: int | None = None,
        oversize: Literal["raise", "truncate"] = "raise",
    ) -> FetchResult:
        """The one guarded fetch behind pages and the browser's requests.

        ``accept``: content types taken (None: any); ``headers``: added to the request;
        ``http_errors="return"``: a 4xx/5xx (or a redirect without Location) is a result,
        not an exception; ``follow_redirects=False`` returns a redirect as it is (its next
        hop is then the caller's, and is checked when requested). ``max_bytes`` lowers the
        body cap (never raises it above max_body_bytes); ``oversize="truncate"`` keeps the
        first ``max_bytes`` of a bigger body instead of failing (robots.txt). Guard and
        deadline are the same in every mode.
        """
        session = self._ensure_session()
        started = time.perf_counter()
        try:
            # One deadline for the whole chain, not fetch_timeout_s per hop.
            async with asyncio.timeout(self._deadline_s):
                return await self._fetch(
                    session,
                    url,
                    started,
                    _Mode(
                        accept,
                        headers,
                        http_errors == "raise",
                        follow_redirects,
                        min(max_bytes, self._max_body) if max_bytes else self._max_body,
                        oversize == "truncate",
                    ),
                )
        except FleetError:
            raise
        except TimeoutError:
            raise TransientError(
                f"timed out after {self._deadline_s:g}s fetching {url}", reason="timeout"
            ) from None
        except aiohttp.ClientError as exc:
            _raise_client_error(exc, url)
        except OSError as exc:
            raise TransientError(
                f"network error fetching {url}: {exc}", reason="connect_error"
            ) from exc

    async def _fetch(
        self, session: aiohttp.ClientSession, url: str, started: float, mode: _Mode
    ) -> FetchResult:
        current = url
        redirects = 0
        while True:
            # aiohttp skips the resolver for IP literals, so they are checked here, per hop,
            # on the very URL object that is requested.
            target = check_url(current, self._policy)
            async with session.get(target, allow_redirects=False, headers=mode.headers) as resp:
                status = resp.status
                location = resp.headers.get("Location")
                if status in REDIRECT_STATUSES and location and mode.follow_redirects:
                    if redirects >= self._max_redirects:
                        raise TooManyRedirects(
                            f"more than {self._max_redirects} redirects starting at {url} "
                            f"(last hop {current} -> {location})"
                        )
                    await _drain(resp)
                    current = redirect_target(current, location)
                    redirects += 1
                    continue
                if mode.raise_http_errors and _passed_on(status, location, mode):
                    await _drain(resp)
                    return _bodiless(url, current, resp, started, redirects)
                if mode.raise_http_errors and not 200 <= status < 300:
                    retry_after = None
                    if status == 429 or status >= 500:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    await _drain(resp)
                    raise HttpStatusError.for_status(status, current, retry_after)
                content_type = resp.content_type
                if mode.accept is not None and content_type not in mode.accept:
                    # No body read: the connection is simply dropped on release.
                    raise UnsupportedContent(
                        f"content type {content_type!r} from {current} is not fetched "
                        f"(accepted: {', '.join(sorted(mode.accept))})"
                    )
                body = await self._read_capped(resp, current, mode.max_bytes, mode.truncate)
                return FetchResult(
                    url=url,
                    final_url=current,
                    status=status,
                    content_type=content_type,
                    charset=charset.lower() if (charset := resp.charset) else None,
                    body=body,
                    elapsed_ms=(time.perf_counter() - started) * 1000.0,
                    redirects=redirects,
                    headers={k.lower(): v for k, v in resp.headers.items()},
                )

    async def _read_capped(
        self, resp: aiohttp.ClientResponse, url: str, limit: int, truncate: bool
    ) -> bytes:
        try:
            declared = resp.content_length
        except ValueError:
            declared = None  # a garbage Content-Length: the aiohttp parser rejects it anyway
        if declared is not None and declared > limit and not truncate:
            raise BodyTooLarge(
                f"{url} declares {declared} bytes, over the {limit} byte limit (max_body_bytes)"
            )
        # Streamed even with a Content-Length: after decompression the body can be far
        # larger than declared, so the cap applies to what we actually hold.
        content = resp.content
        chunks: list[bytes] = []
        size = 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit and truncate:
                # The rest is dropped with the connection on release.
                chunks.append(chunk[: len(chunk) - (size - limit)])
                return b"".join(chunks)
            if size > limit:
                raise BodyTooLarge(
                    f"{url} body exceeds the {limit} byte limit (max_body_bytes); stopped reading"
                )
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass(frozen=True, slots=True)
class _Mode:
    accept: frozenset[str] | None
    headers: Mapping[str, str] | None
    raise_http_errors: bool
    follow_redirects: bool
    max_bytes: int
    truncate: bool


def _passed_on(status: int, location: str | None, mode: _Mode) -> bool:
    """Statuses a raising fetch returns rather than raises: a redirect it was told not to
    follow, and 304 Not Modified to a conditional request."""
    if status in REDIRECT_STATUSES and location and not mode.follow_redirects:
        return True
    return status == 304 and bool(mode.headers) and _conditional(mode.headers)


def _conditional(headers: Mapping[str, str] | None) -> bool:
    return any(k.lower() in ("if-none-match", "if-modified-since") for k in headers or {})


def _bodiless(
    url: str, current: str, resp: aiohttp.ClientResponse, started: float, redirects: int
) -> FetchResult:
    return FetchResult(
        url=url,
        final_url=current,
        status=resp.status,
        content_type="",
        charset=None,
        body=b"",
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
        redirects=redirects,
        headers={k.lower(): v for k, v in resp.headers.items()},
    )


def redirect_target(current: str, location: str) -> str:
    """The normalised URL a redirect from ``current`` points to (InvalidUrl if none)."""
    try:
        return normalize_url(urljoin(current, location.strip()))
    except InvalidUrl as exc:
        raise InvalidUrl(f"bad redirect from {current} to {location!r}: {exc}") from None
    except ValueError as exc:  # urljoin on a malformed netloc, e.g. "http://[::1"
        raise InvalidUrl(f"bad redirect from {current} to {location!r}: {exc}") from None


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a small body so keep-alive survives; failures here must not mask the status."""
    try:
        length = resp.content_length
        if length is not None and length <= _DRAIN_LIMIT:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                await resp.read()
    except (aiohttp.ClientError, ValueError, TimeoutError):
        pass


def _raise_client_error(exc: aiohttp.ClientError, url: str) -> NoReturn:
    """Map aiohttp's exception tree onto fleet's transient/permanent split."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        raise InvalidUrl(f"invalid URL {url}: {exc}") from None
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # A bad certificate will not fix itself within our retry window.
        raise PermanentError(f"TLS certificate error for {url}: {exc}", reason="tls_error")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        raise TransientError(f"DNS lookup failed for {url}: {exc}", reason="dns_error")
    if isinstance(exc, aiohttp.ClientConnectorError):
        raise TransientError(f"cannot connect to {url}: {exc}", reason="connect_error")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        raise TransientError(f"server disconnected fetching {url}", reason="server_disconnected")
    if isinstance(exc, aiohttp.ClientPayloadError):
        raise TransientError(f"broken body from {url}: {exc}", reason="payload_error")
    if isinstance(exc, aiohttp.ClientOSError):  # e.g. connection reset mid-request
        raise TransientError(f"network error fetching {url}: {exc}", reason="network_error")
    if isinstance(exc, aiohttp.ClientResponseError):
        raise TransientError(f"bad HTTP response from {url}: {exc}", reason="protocol_error")
    raise TransientError(f"{name} fetching {url}: {exc}", reason="client_error")
