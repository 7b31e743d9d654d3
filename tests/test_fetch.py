"""Fetcher against real HTTP servers on loopback (free ports), plus a canary that must
never be contacted when the guard refuses an address."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from fleet.errors import (
    BlockedAddress,
    BodyTooLarge,
    InvalidUrl,
    PermanentError,
    TooManyRedirects,
    TransientError,
    UnsupportedContent,
)
from fleet.scrape.fetch import Fetcher, FetchResult, parse_retry_after
from fleet.settings import Settings
from tests.conftest import Canary

MAX_BODY = 64 * 1024
HTML_LATIN1 = "<html><head><title>Café</title></head><body>Crème brûlée</body></html>"


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Site:
    port: int
    hits: Counter[str] = field(default_factory=Counter)
    peers: set[tuple[str, int]] = field(default_factory=set)
    seen_headers: dict[str, str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _site_app(state: Site) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def track(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        state.hits[request.path] += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            state.peers.add((peer[0], peer[1]))
        return await handler(request)

    @routes.get("/page")
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=HTML_LATIN1.encode("latin-1"),
            headers={"Content-Type": "Text/HTML; Charset=ISO-8859-1"},
        )

    @routes.get("/plain")
    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="just text", content_type="text/plain")

    @routes.get("/headers")
    async def headers(request: web.Request) -> web.Response:
        state.seen_headers.update(request.headers)
        return web.Response(text="<p>ok</p>", content_type="text/html")

    @routes.get("/r1")
    async def r1(request: web.Request) -> web.Response:
        raise web.HTTPFound("/r2")

    @routes.get("/r2")
    async def r2(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(state.url("/dir/r3"))

    @routes.get("/dir/r3")
    async def r3(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("../page#frag")  # relative, with a fragment

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @routes.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(
            status=int(request.match_info["code"]),
            text="<p>status</p>",
            content_type="text/html",
            headers=headers,
        )

    @routes.get("/big")
    async def big(request: web.Request) -> web.Response:
        size = int(request.query["size"])
        return web.Response(body=b"a" * size, content_type="text/html")

    @routes.get("/chunked")
    async def chunked(request: web.Request) -> web.StreamResponse:
        # No Content-Length; ``size`` bytes, or endless when size is absent.
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        limit = int(request.query.get("size", 50 * 1024 * 1024))
        sent = 0
        chunk = b"x" * 8192
        try:
            while sent < limit and not state.release.is_set():
                piece = chunk[: limit - sent]
                await resp.write(piece)
                sent += len(piece)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    @routes.get("/bomb")
    async def bomb(request: web.Request) -> web.Response:
        packed = gzip.compress(b"\0" * (4 * MAX_BODY))
        return web.Response(
            body=packed,
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )

    @routes.get("/gzip")
    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"<p>small page</p>"),
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )

    @routes.get("/png")
    async def png(request: web.Request) -> web.StreamResponse:
        # Headers only, then the body never comes: a fetcher that read it would hang.
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = 10_000_000
        await resp.prepare(request)
        await state.release.wait()
        return resp

    @routes.get("/hang")
    async def hang(request: web.Request) -> web.Response:
        await state.release.wait()
        return web.Response(text="late", content_type="text/html")

    @routes.get("/hang-body")
    async def hang_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"<html>")
        await state.release.wait()
        return resp

    app = web.Application(middlewares=[track])
    app.add_routes(routes)
    return app


@pytest.fixture
async def http_site() -> AsyncIterator[Site]:
    sock = _free_socket()
    state = Site(port=sock.getsockname()[1])
    runner = web.AppRunner(_site_app(state), shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield state
    state.release.set()  # unblock hanging handlers so shutdown is quick
    await runner.cleanup()


def _settings(site: Site, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "allow_hosts": (f"127.0.0.1:{site.port}",),
        "fetch_timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "max_redirects": 5,
        "max_body_bytes": MAX_BODY,
        "user_agent": "fleet-test/1.0",
        "worker_concurrency": 8,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def fetcher(http_site: Site) -> AsyncIterator[Fetcher]:
    async with Fetcher(_settings(http_site)) as f:
        yield f


class StubResolver(AbstractResolver):
    """Maps test names to loopback; anything else fails. No DNS traffic at all."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"stub: no such host {host}")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def _assert_canary_untouched(canary: Canary, site: Site) -> None:
    """Zero connections so far, proven by a barrier: an allowed fetch to the canary must be
    its first connection (a stray attempt would have been accepted earlier)."""
    assert canary.connections == 0
    assert canary.requests == 0
    allowed = _settings(site, allow_hosts=(f"127.0.0.1:{canary.port}",))
    async with Fetcher(allowed) as f:
        result = await f.fetch(canary.url)
    assert b"canary" in result.body
    assert canary.connections == 1
    assert canary.requests == 1


# --- success paths ---------------------------------------------------------------


async def test_fetch_html_with_charset(fetcher: Fetcher, http_site: Site) -> None:
    url = http_site.url("/page")
    result = await fetcher.fetch(url)
    assert isinstance(result, FetchResult)
    assert result.url == url
    assert result.final_url == url
    assert result.status == 200
    assert result.content_type == "text/html"
    assert result.charset == "iso-8859-1"
    assert result.body == HTML_LATIN1.encode("latin-1")
    assert result.redirects == 0
    assert result.elapsed_ms > 0


async def test_fetch_plain_text_and_gzip(fetcher: Fetcher, http_site: Site) -> None:
    plain = await fetcher.fetch(http_site.url("/plain"))
    assert plain.content_type == "text/plain"
    assert plain.body == b"just text"
    gz = await fetcher.fetch(http_site.url("/gzip"))
    assert gz.body == b"<p>small page</p>"  # decompressed transparently


async def test_sends_user_agent_and_accept(fetcher: Fetcher, http_site: Site) -> None:
    await fetcher.fetch(http_site.url("/headers"))
    assert http_site.seen_headers["User-Agent"] == "fleet-test/1.0"
    assert http_site.seen_headers["Accept"].startswith("text/html")
    assert "Cookie" not in http_site.seen_headers


async def test_redirect_chain(fetcher: Fetcher, http_site: Site) -> None:
    result = await fetcher.fetch(http_site.url("/r1"))
    assert result.status == 200
    assert result.redirects == 3
    assert result.url == http_site.url("/r1")
    assert result.final_url == http_site.url("/page")  # relative Location resolved, no fragment
    assert result.body == HTML_LATIN1.encode("latin-1")


async def test_connections_are_reused(fetcher: Fetcher, http_site: Site) -> None:
    for _ in range(10):
        await fetcher.fetch(http_site.url("/page"))
    with pytest.raises(PermanentError):
        await fetcher.fetch(http_site.url("/status/404"))  # small error body drained
    await fetcher.fetch(http_site.url("/r1"))  # redirect bodies drained too
    assert len(http_site.peers) == 1


async def test_concurrent_fetches(http_site: Site) -> None:
    async with Fetcher(_settings(http_site, worker_concurrency=4)) as f:
        results = await asyncio.gather(*(f.fetch(http_site.url("/page")) for _ in range(50)))
    assert all(r.status == 200 for r in results)
    assert http_site.hits["/page"] == 50


async def test_body_at_limit_is_accepted(fetcher: Fetcher, http_site: Site) -> None:
    result = await fetcher.fetch(http_site.url(f"/big?size={MAX_BODY}"))
    assert len(result.body) == MAX_BODY
    result = await fetcher.fetch(http_site.url(f"/chunked?size={MAX_BODY}"))
    assert len(result.body) == MAX_BODY


async def test_lazy_session_without_context_manager(http_site: Site) -> None:
    fetcher = Fetcher(_settings(http_site))
    try:
        result = await fetcher.fetch(http_site.url("/page"))
        assert result.status == 200
    finally:
        await fetcher.close()
    await fetcher.close()  # idempotent


# --- SSRF: canary must see nothing ---------------------------------------------------


async def test_redirect_to_unlisted_loopback_port_is_blocked(
    fetcher: Fetcher, http_site: Site, canary: Canary
) -> None:
    with pytest.raises(BlockedAddress) as info:
        await fetcher.fetch(http_site.url(f"/redirect?to={canary.url}"))
    assert f"127.0.0.1:{canary.port}" in str(info.value)
    assert "FLEET_ALLOW_HOSTS" in str(info.value)
    assert http_site.hits["/redirect"] == 1
    await _assert_canary_untouched(canary, http_site)


@pytest.mark.parametrize(
    "target",
    [
        "http://2130706433:{port}/",
        "http://0x7f000001:{port}/",
        "http://127.1:{port}/",
        "http://0177.0.0.1:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
    ],
)
async def test_redirect_to_numeric_spellings_is_blocked(
    fetcher: Fetcher, http_site: Site, canary: Canary, target: str
) -> None:
    location = target.format(port=canary.port)
    with pytest.raises(BlockedAddress):
        await fetcher.fetch(http_site.url(f"/redirect?to={location}"))
    await _assert_canary_untouched(canary, http_site)


async def test_direct_fetch_of_unlisted_loopback_is_blocked(
    fetcher: Fetcher, http_site: Site, canary: Canary
) -> None:
    with pytest.raises(BlockedAddress):
        await fetcher.fetch(canary.url)
    with pytest.raises(BlockedAddress):
        await fetcher.fetch(f"http://[::1]:{canary.port}/")
    await _assert_canary_untouched(canary, http_site)


@pytest.mark.parametrize(
    "host",
    [
        "127\u30020\u30020\u30021",  # ideographic full stops: IDNA maps them to "."
        "\uff11\uff12\uff17.0.0.1",  # full-width digits
        "127.0.0.1.",
        "0x7F.1",
    ],
)
async def test_unnormalised_spellings_are_blocked(
    fetcher: Fetcher, http_site: Site, canary: Canary, host: str
) -> None:
    # Fetcher must not rely on its caller having normalised the URL: the check sees the
    # host exactly as aiohttp will dial it.
    with pytest.raises(BlockedAddress):
        await fetcher.fetch(f"http://{host}:{canary.port}/")
    await _assert_canary_untouched(canary, http_site)


async def test_hostname_resolving_to_loopback_is_blocked(http_site: Site, canary: Canary) -> None:
    # Goes through GuardedResolver inside aiohttp's connector (names are not literals).
    stub = StubResolver({"canary.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1"]})
    async with Fetcher(_settings(http_site), resolver=stub) as f:
        with pytest.raises(BlockedAddress):
            await f.fetch(f"http://canary.test:{canary.port}/")
        with pytest.raises(BlockedAddress):
            await f.fetch(http_site.url(f"/redirect?to=http://mixed.test:{canary.port}/"))
    await _assert_canary_untouched(canary, http_site)


async def test_allow_listed_hostname_connects_to_checked_address(
    http_site: Site, canary: Canary
) -> None:
    stub = StubResolver({"intranet.test": ["127.0.0.1"]})
    settings = _settings(http_site, allow_hosts=(f"intranet.test:{canary.port}",))
    async with Fetcher(settings, resolver=stub) as f:
        result = await f.fetch(f"http://intranet.test:{canary.port}/")
        assert b"canary" in result.body
        # The same name on another port is not exempt.
        with pytest.raises(BlockedAddress):
            await f.fetch(f"http://intranet.test:{http_site.port}/page")
    assert canary.connections == 1


# --- redirects -----------------------------------------------------------------------


async def test_redirect_loop(fetcher: Fetcher, http_site: Site) -> None:
    with pytest.raises(TooManyRedirects):
        await fetcher.fetch(http_site.url("/loop"))
    assert http_site.hits["/loop"] == 6  # the first request plus max_redirects hops


async def test_max_redirects_zero(http_site: Site) -> None:
    async with Fetcher(_settings(http_site, max_redirects=0)) as f:
        with pytest.raises(TooManyRedirects):
            await f.fetch(http_site.url("/r1"))


@pytest.mark.parametrize(
    "location", ["ftp://127.0.0.1/file", "javascript:alert(1)", "http://user:pw@127.0.0.1/"]
)
async def test_bad_redirect_target_is_permanent(
    fetcher: Fetcher, http_site: Site, location: str
) -> None:
    with pytest.raises(InvalidUrl):
        await fetcher.fetch(http_site.url(f"/redirect?to={location}"))


async def test_non_http_scheme_refused(fetcher: Fetcher) -> None:
    with pytest.raises(InvalidUrl):
        await fetcher.fetch("file:///etc/passwd")


# --- statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 403, 404, 410])
async def test_4xx_is_permanent(fetcher: Fetcher, http_site: Site, code: int) -> None:
    with pytest.raises(PermanentError) as info:
        await fetcher.fetch(http_site.url(f"/status/{code}"))
    assert info.value.reason == f"http_{code}"


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_5xx_is_transient(fetcher: Fetcher, http_site: Site, code: int) -> None:
    with pytest.raises(TransientError) as info:
        await fetcher.fetch(http_site.url(f"/status/{code}"))
    assert info.value.reason == f"http_{code}"
    assert info.value.retry_after_s is None


async def test_429_retry_after_seconds(fetcher: Fetcher, http_site: Site) -> None:
    with pytest.raises(TransientError) as info:
        await fetcher.fetch(http_site.url("/status/429?retry_after=7"))
    assert info.value.retry_after_s == 7


async def test_503_retry_after_date_and_cap(fetcher: Fetcher, http_site: Site) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(days=2), usegmt=True)
    with pytest.raises(TransientError) as info:
        await fetcher.fetch(http_site.url(f"/status/503?retry_after={when}"))
    assert info.value.retry_after_s == 3600.0


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 120 ", now=now) == 120.0
    assert parse_retry_after("999999", now=now) == 3600.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after("", now=now) is None
    assert parse_retry_after(None, now=now) is None


# --- bodies --------------------------------------------------------------------------


async def test_oversize_with_content_length(fetcher: Fetcher, http_site: Site) -> None:
    with pytest.raises(BodyTooLarge):
        await fetcher.fetch(http_site.url(f"/big?size={MAX_BODY + 1}"))


async def test_oversize_chunked_without_content_length(fetcher: Fetcher, http_site: Site) -> None:
    with pytest.raises(BodyTooLarge):
        await fetcher.fetch(http_site.url(f"/chunked?size={MAX_BODY + 1}"))


async def test_endless_body_stops_at_cap(fetcher: Fetcher, http_site: Site) -> None:
    with pytest.raises(BodyTooLarge):
        await fetcher.fetch(http_site.url("/chunked"))


async def test_decompression_bomb_is_capped(fetcher: Fetcher, http_site: Site) -> None:
    with pytest.raises(BodyTooLarge):
        await fetcher.fetch(http_site.url("/bomb"))


async def test_unsupported_content_reads_no_body(fetcher: Fetcher, http_site: Site) -> None:
    # The server never sends the body: reading it would end in a timeout instead.
    with pytest.raises(UnsupportedContent) as info:
        await fetcher.fetch(http_site.url("/png"))
    assert "image/png" in str(info.value)


# --- request(): the browser's resources through the same guard -----------------------


async def test_request_takes_any_content_type_and_returns_http_errors(
    fetcher: Fetcher, http_site: Site
) -> None:
    missing = await fetcher.request(http_site.url("/status/404"))
    assert (missing.status, missing.body) == (404, b"<p>status</p>")
    assert missing.headers["content-type"].startswith("text/html")
    with pytest.raises(UnsupportedContent):  # a type filter applies when given
        await fetcher.request(http_site.url("/big?size=10"), accept=frozenset({"text/css"}))
    with pytest.raises(BodyTooLarge):  # the cap holds in every mode
        await fetcher.request(http_site.url(f"/big?size={MAX_BODY + 1}"))


async def test_request_sends_extra_headers(fetcher: Fetcher, http_site: Site) -> None:
    await fetcher.request(http_site.url("/headers"), headers={"Referer": "http://r.example/"})
    assert http_site.seen_headers["Referer"] == "http://r.example/"


async def test_request_without_following_returns_the_redirect(
    fetcher: Fetcher, http_site: Site, canary: Canary
) -> None:
    hop = await fetcher.request(http_site.url(f"/redirect?to={canary.url}"), follow_redirects=False)
    assert (hop.status, hop.headers["location"]) == (302, canary.url)
    with pytest.raises(BlockedAddress):  # followed: the hop is checked as in fetch()
        await fetcher.request(http_site.url(f"/redirect?to={canary.url}"))
    await _assert_canary_untouched(canary, http_site)


# --- network failures ----------------------------------------------------------------


async def test_hanging_server_times_out(http_site: Site) -> None:
    async with Fetcher(_settings(http_site, fetch_timeout_s=0.3)) as f:
        with pytest.raises(TransientError) as info:
            await f.fetch(http_site.url("/hang"))
        assert info.value.reason == "timeout"
        with pytest.raises(TransientError) as info:
            await f.fetch(http_site.url("/hang-body"))
        assert info.value.reason == "timeout"


async def test_connection_refused_is_transient(http_site: Site) -> None:
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()  # bound once, never listening: connecting is refused
    async with Fetcher(_settings(http_site, allow_hosts=(f"127.0.0.1:{port}",))) as f:
        with pytest.raises(TransientError) as info:
            await f.fetch(f"http://127.0.0.1:{port}/")
    assert info.value.reason == "connect_error"


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes], Awaitable[int]]]:
    """Start a TCP server that answers every request with fixed bytes, then closes."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes) -> int:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                writer.write(reply)
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"", "server_disconnected"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1000\r\n\r\nshort",
            "payload_error",
        ),
        (b"garbage that is not HTTP\r\n\r\n", "protocol_error"),
    ],
)
async def test_broken_servers_are_transient(
    http_site: Site, raw_server: Callable[[bytes], Awaitable[int]], reply: bytes, reason: str
) -> None:
    port = await raw_server(reply)
    async with Fetcher(_settings(http_site, allow_hosts=(f"127.0.0.1:{port}",))) as f:
        with pytest.raises(TransientError) as info:
            await f.fetch(f"http://127.0.0.1:{port}/")
    assert info.value.reason == reason
