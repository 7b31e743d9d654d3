"""The guarded forward proxy every browser connection goes through (fleet.proxy), driven
by a raw HTTP client on loopback: what it forwards, what it refuses, and a canary on a
non-allowed loopback port that must never see a connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from fleet.scrape.fetch import Fetcher
from fleet.scrape.proxy import GuardedProxy
from fleet.settings import Settings
from tests.conftest import Canary

MAX_BODY = 4096


@pytest.fixture
async def site() -> AsyncIterator[int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=f"page {request.path} {request.headers.get('Cookie', 'no-cookie')}",
            content_type="text/plain",
            headers={"Cache-Control": "max-age=60", "Set-Cookie": "a=b"},
        )

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * (MAX_BODY + 1), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/big", big)
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield sock.getsockname()[1]
    await runner.cleanup()


class StubResolver(AbstractResolver):
    """Names resolve from a table, never through real DNS."""

    def __init__(self, table: dict[str, str]) -> None:
        self._table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ip = self._table[host]
        return [
            ResolveResult(
                hostname=host, host=ip, port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        return None


class Proxies:
    """Proxies started by a test (each with its own fetcher), closed after it."""

    def __init__(self) -> None:
        self.started: list[tuple[GuardedProxy, Fetcher]] = []

    async def start(
        self,
        allow: tuple[str, ...],
        *,
        names: dict[str, str] | None = None,
        max_connections: int = 256,
        idle_timeout_s: float = 60.0,
    ) -> GuardedProxy:
        settings = Settings(allow_hosts=allow, max_body_bytes=MAX_BODY, connect_timeout_s=2.0)
        resolver = StubResolver(names or {})
        fetcher = Fetcher(settings, resolver=resolver)
        proxy = GuardedProxy(
            settings,
            fetcher,
            resolver=resolver,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
        )
        self.started.append((proxy, fetcher))
        await proxy.start()
        return proxy

    async def close(self) -> None:
        for proxy, fetcher in self.started:
            await proxy.close()
            await fetcher.close()


@pytest.fixture
async def proxies() -> AsyncIterator[Proxies]:
    made = Proxies()
    try:
        yield made
    finally:
        await made.close()


async def exchange(
    proxy: GuardedProxy, *requests: bytes
) -> tuple[list[bytes], asyncio.StreamReader, asyncio.StreamWriter]:
    """Send requests one after the other on one connection; the head+body of each answer."""
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    for request in requests:
        writer.write(request)
        await writer.drain()
        answers.append(await read_response(reader))
    return answers, reader, writer


async def read_response(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + (await reader.readexactly(length) if length else b"")


def get(url: str, *extra: str) -> bytes:
    lines = [f"GET {url} HTTP/1.1", "Host: x", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_plain_http_is_forwarded_with_keep_alive_and_without_cookies(
    proxies: Proxies, site: int
) -> None:
    proxy = await proxies.start((f"127.0.0.1:{site}",))
    (first, second), _, writer = await exchange(
        proxy,
        get(f"http://127.0.0.1:{site}/a", "Cookie: secret=1"),
        get(f"http://127.0.0.1:{site}/b"),
    )
    writer.close()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"page /a no-cookie")  # the browser's cookies stay behind
    assert b"set-cookie" not in first.lower()
    assert b"cache-control: max-age=60" in first.lower()  # Chromium's cache can use it
    assert second.endswith(b"page /b no-cookie")
    assert proxy.requests == 2


async def test_redirects_go_back_to_the_browser_and_the_next_hop_is_checked(
    proxies: Proxies, site: int, canary: Canary
) -> None:
    proxy = await proxies.start((f"127.0.0.1:{site}",))
    target = f"http://127.0.0.1:{canary.port}/"
    (hop,), _, writer = await exchange(proxy, get(f"http://127.0.0.1:{site}/redirect?to={target}"))
    writer.close()
    assert hop.startswith(b"HTTP/1.1 302 ")
    assert f"location: {target}".encode() in hop.lower()
    (refused,), _, writer = await exchange(proxy, get(target))
    writer.close()
    assert refused.startswith(b"HTTP/1.1 403 ")
    assert canary.connections == 0


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{port}", "2130706433:{port}", "0x7f000001:{port}", "[::ffff:127.0.0.1]:{port}"],
)
async def test_loopback_spellings_are_refused_for_http_and_connect(
    proxies: Proxies, site: int, canary: Canary, host: str
) -> None:
    proxy = await proxies.start((f"127.0.0.1:{site}",))
    authority = host.format(port=canary.port)
    (plain,), _, writer = await exchange(proxy, get(f"http://{authority}/"))
    writer.close()
    connect = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    (tunnel,), _, writer = await exchange(proxy, connect)
    writer.close()
    assert plain.startswith(b"HTTP/1.1 403 ")
    assert tunnel.startswith(b"HTTP/1.1 403 ")
    assert canary.connections == 0


async def test_connect_refuses_a_name_resolving_to_loopback(
    proxies: Proxies, canary: Canary
) -> None:
    proxy = await proxies.start((), names={"evil.example": "127.0.0.1"})
    authority = f"evil.example:{canary.port}"
    (answer,), _, writer = await exchange(proxy, f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode())
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert canary.connections == 0


async def test_connect_tunnels_to_the_checked_address_of_an_allowed_name(
    proxies: Proxies, site: int
) -> None:
    proxy = await proxies.start(
        (f"intranet.example:{site}",), names={"intranet.example": "127.0.0.1"}
    )
    authority = f"intranet.example:{site}"
    (answer,), reader, writer = await exchange(
        proxy, f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    # Bytes now go straight to the site: speak HTTP through the tunnel.
    writer.write(b"GET /t HTTP/1.1\r\nHost: intranet.example\r\nConnection: close\r\n\r\n")
    await writer.drain()
    reply = await read_response(reader)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"page /t no-cookie")
    assert proxy.tunnels == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", b"405"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),  # origin form: not a proxy request
        (b"GET ftp://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"400"),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", b"400"),
        (b"garbage\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1:{port}/big HTTP/1.1\r\n\r\n", b"502"),  # over max_body_bytes
    ],
)
async def test_everything_else_is_refused(
    proxies: Proxies, site: int, request_bytes: bytes, status: bytes
) -> None:
    proxy = await proxies.start((f"127.0.0.1:{site}",))
    (answer,), _, writer = await exchange(proxy, request_bytes.replace(b"{port}", b"%d" % site))
    writer.close()
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]


async def test_connections_are_bounded(proxies: Proxies, site: int) -> None:
    proxy = await proxies.start((f"127.0.0.1:{site}",), max_connections=2)
    port = int(proxy.url.rsplit(":", 1)[1])
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await read_response(reader)).startswith(b"HTTP/1.1 503 ")
    writer.close()
    for _, w in held:
        w.close()


async def test_idle_connections_are_closed(proxies: Proxies, site: int) -> None:
    proxy = await proxies.start((f"127.0.0.1:{site}",), idle_timeout_s=0.2)
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the proxy, nothing sent
    writer.close()
