"""The browser's SSRF fence: a guarded HTTP forward proxy on 127.0.0.1.

Chromium is launched with ``--proxy-server`` pointing here, nothing bypassing it (not even
loopback), and its own DNS disabled, so every connection a page makes arrives here first:

* ``CONNECT host:port`` (HTTPS, WSS): the host is checked like every fetch of the worker
  (``check_url`` for IP literals, ``GuardedResolver`` for names: every address must be
  public unless ``host[:port]`` is allow-listed), then the connection is opened to the
  very address that was checked (no second lookup) and bytes are piped both ways.
* ``GET``/``HEAD http://host/...`` (absolute form, plain HTTP): fetched with the worker's
  guarded ``Fetcher.request`` (same checks, body cap, deadline); a redirect is handed back
  to the browser, whose next hop comes through here and is checked again.
* anything else is refused (405/400), and the proxy is bounded: connections, header size,
  idle and connect timeouts.

Unlike intercepting every request with Playwright's ``route``, this costs the browser no
round trip per request through the driver and keeps Chromium's HTTP cache on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Final, Self
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from yarl import URL

from fleet.errors import BlockedAddress, FleetError, InvalidUrl, PermanentError
from fleet.scrape.fetch import FetchResult, GuardedRequesting
from fleet.scrape.netguard import GuardedResolver, HostPolicy, check_url
from fleet.settings import Settings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CONNECTIONS: Final = 256
IDLE_TIMEOUT_S: Final = 60.0
PIPE_CHUNK: Final = 64 * 1024
PROXIED_METHODS: Final = frozenset({"GET", "HEAD"})
# Request headers passed on for plain HTTP; cookies and auth never leave the worker there.
FORWARDED_HEADERS: Final = frozenset(
    {"accept", "accept-language", "referer", "content-type", "if-none-match", "if-modified-since"}
)
# Response headers that describe the wire (the body is sent decoded, with its own length)
# or would set state in the browser.
DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "set-cookie",
        "upgrade",
        "trailer",
    }
)


class _Refused(PermanentError):
    """The proxy answers the browser's request with ``status`` instead of forwarding it.

    Private: it never leaves the proxy (the browser sees the status, the page's outcome
    comes from the render). Permanent: the same request would be refused again.
    """

    reason = "proxy_refused"

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class GuardedProxy:
    """Use as ``async with GuardedProxy(settings, fetcher) as proxy``; ``proxy.url`` is
    what Chromium's ``--proxy-server`` gets."""

    def __init__(
        self,
        settings: Settings,
        fetcher: GuardedRequesting,
        *,
        resolver: AbstractResolver | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        """``resolver``: the inner resolver GuardedResolver wraps (tests pass a stub)."""
        self._settings = settings
        self._fetcher = fetcher
        self._policy = HostPolicy(settings.allow_hosts)
        self._resolver = GuardedResolver(self._policy, resolver)
        self._max_connections = max_connections
        self._idle_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._port = 0
        self._handlers: set[asyncio.Task[None]] = set()
        # Documents the worker fetched already, by URL: the browser's request for one of
        # them is answered from here instead of fetching the page a second time.
        self._documents: dict[str, list[FetchResult]] = {}
        # Script requests in flight (a dynamic import() among them), by the origin of the
        # page that made them (their Referer's): what settling counts beside the page's
        # own tracker (``loading``).
        self._loading: collections.Counter[str] = collections.Counter()
        # Counters, read by tests.
        self.refused = 0
        self.tunnels = 0
        self.requests = 0
        self.served = 0  # documents answered from the worker's fetch

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` for Chromium's ``--proxy-server``; raises if not started."""
        if self._server is None:
            raise RuntimeError("proxy not started")
        return f"http://127.0.0.1:{self._port}"

    @contextlib.contextmanager
    def serving(self, document: FetchResult) -> Iterator[None]:
        """While inside, one plain-HTTP ``GET`` of ``document.final_url`` is answered with
        ``document`` (the worker's own guarded fetch). HTTPS goes through a tunnel the
        proxy cannot answer in, so there the browser fetches the page again."""
        queue = self._documents.setdefault(document.final_url, [])
        queue.append(document)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                queue.remove(document)
            if not queue and self._documents.get(document.final_url) is queue:
                del self._documents[document.final_url]

    def loading(self, document_url: str) -> int:
        """Plain-HTTP script requests in flight from pages of ``document_url``'s origin.

        A page cannot see its own dynamic import() until the module has arrived, the proxy
        can. By origin, since the Referer of an import() is the importing script (and a
        cross-origin one carries only the origin): a tab may wait for another tab's script
        of the same site, which is short (or, on a plain-HTTP origin that sends no
        Sec-Fetch-Dest, for its fetch() calls: a long poll there holds the site's settles
        up to render_settle_max_s). Over HTTPS the proxy sees only a tunnel, so there it
        counts nothing."""
        return self._loading.get(_origin(document_url), 0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on a free loopback port; idempotent."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, limit=MAX_HEAD_BYTES
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, cut open connections (waiting up to 5 s), close the resolver."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)
        if server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await server.wait_closed()
        await self._resolver.close()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self._max_connections:
            await _respond_error(writer, 503, "too many connections")
            writer.close()
            return
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the browser went away, or sent nothing in time
        except Exception:  # a bug here must cost one connection, not the worker
            log.exception("browser proxy connection failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one browser connection, kept alive until either side closes."""
        while True:
            async with asyncio.timeout(self._idle_s):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    return  # closed between requests
            try:
                method, target, headers = _parse_head(head)
                if method == "CONNECT":
                    await self._tunnel(target, reader, writer)
                    return
                keep = await self._forward(method, target, headers, writer)
            except _Refused as exc:
                self.refused += 1
                log.debug("browser request refused: %s", exc)
                await _respond_error(writer, exc.status, str(exc))
                return
            if not keep:
                return

    async def _tunnel(
        self, authority: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not authority.rsplit(":", 1)[-1].isdigit():
            raise _Refused(400, f"CONNECT {authority[:100]!r}: host:port expected")
        target = self._check(f"https://{authority}/")
        host, port = target.raw_host or "", target.port or 443
        try:
            # Checked here (names: every address; literals: the address itself) and the
            # connection goes to exactly the address checked.
            addresses = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        except (BlockedAddress, InvalidUrl) as exc:
            raise _Refused(403, str(exc)) from None
        except OSError as exc:
            raise _Refused(502, f"cannot resolve {host}: {exc}") from None
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for address in addresses:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self._settings.connect_timeout_s):
                    upstream = await asyncio.open_connection(address["host"], address["port"])
                break
        if upstream is None:
            raise _Refused(502, f"cannot connect to {authority}")
        self.tunnels += 1
        up_reader, up_writer = upstream
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(self._idle_s):
                    chunk = await src.read(PIPE_CHUNK)
                if not chunk:
                    break
                dst.write(chunk)
                await dst.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            # One side done: end the other's writing half too, so both pipes finish.
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()
                else:
                    dst.close()

    async def _forward(
        self, method: str, target: str, headers: dict[str, str], writer: asyncio.StreamWriter
    ) -> bool:
        """One plain-HTTP request; returns whether the connection stays open."""
        if method not in PROXIED_METHODS:
            raise _Refused(405, f"method {method} not proxied")
        if not target.lower().startswith("http://"):
            raise _Refused(400, f"absolute http:// URL expected, got {target[:100]!r}")
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            raise _Refused(400, "request bodies are not proxied")
        self._check(target)  # IP literals and scheme; names are checked by the resolver
        self.requests += 1
        keep = headers.get("proxy-connection", headers.get("connection", "")).lower() != "close"
        waiting = self._documents.get(target) if method == "GET" else None
        response_headers: Mapping[str, str]
        if waiting:
            res = waiting.pop(0)
            self.served += 1
            content_type = res.content_type + (f"; charset={res.charset}" if res.charset else "")
            response_headers = {"content-type": content_type}
        else:
            forwarded = {k: v for k, v in headers.items() if k in FORWARDED_HEADERS}
            referer = _origin(headers.get("referer", "")) if _is_script(headers) else ""
            if referer:
                self._loading[referer] += 1
            try:
                res = await self._fetcher.request(target, headers=forwarded, follow_redirects=False)
            except (BlockedAddress, InvalidUrl) as exc:
                raise _Refused(403, str(exc)) from None
            except FleetError as exc:
                raise _Refused(504 if exc.reason == "timeout" else 502, str(exc)) from None
            finally:
                if referer:
                    self._loading[referer] -= 1
                    if self._loading[referer] <= 0:
                        del self._loading[referer]
            response_headers = res.headers
        body = b"" if method == "HEAD" else res.body
        lines = [f"HTTP/1.1 {res.status} {_reason(res.status)}"]
        lines += [
            f"{k}: {v}" for k, v in response_headers.items() if k not in DROPPED_RESPONSE_HEADERS
        ]
        lines.append(f"content-length: {len(res.body)}")
        lines.append("connection: keep-alive" if keep else "connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body)
        await writer.drain()
        return keep

    def _check(self, url: str) -> URL:
        try:
            return check_url(url, self._policy)
        except (BlockedAddress, InvalidUrl) as exc:
            raise _Refused(403, str(exc)) from None


def _is_script(headers: Mapping[str, str]) -> bool:
    """A script or module request: Sec-Fetch-Dest says so where Chromium sends it
    (trustworthy origins), else the Accept of scripts (which fetch() shares: the page's
    tracker counts those anyway)."""
    dest = headers.get("sec-fetch-dest")
    if dest:
        return dest == "script"
    return headers.get("accept", "") == "*/*"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _Refused(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise _Refused(400, f"unsupported version {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _Refused(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def _respond_error(writer: asyncio.StreamWriter, status: int, why: str) -> None:
    body = why.encode("utf-8", "replace")[:2000]
    with contextlib.suppress(Exception):
        writer.write(
            f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
