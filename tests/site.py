"""A real HTTP site on loopback for tests, served from its own thread and event loop.

Its own loop means tests may block (subprocess waits, kill -9) without starving it.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

from aiohttp import web

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


def page_html(n: int, links: int = 5) -> str:
    body = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(200))
    anchors = "".join(f'<a href="/page/{(n + i) % 1000}">p{i}</a> ' for i in range(1, links + 1))
    return (
        f'<!doctype html><html lang="en"><head><title>Page {n}</title>'
        f'<meta name="description" content="Test page number {n}"></head>'
        f"<body><nav>menu</nav><main><h1>Heading {n}</h1>"
        f"<p>unique{n} {body}</p><p>{anchors}</p></main></body></html>"
    )


class LoopbackSite:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.hits: collections.Counter[str] = collections.Counter()
        self.slow_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.hostport}{path}"

    def __enter__(self) -> LoopbackSite:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/page/{n}", self._page)
        app.router.add_get("/slow/{n}", self._slow)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/big", self._big)
        # Short shutdown: slow handlers (sleeping pages) must not hold up test teardown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers still sleeping (slow pages) are cancelled rather than left dangling.
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current:
                task.cancel()

    def _count(self, request: web.Request) -> None:
        self.hits[request.path] += 1

    async def _page(self, request: web.Request) -> web.Response:
        self._count(request)
        n = int(request.match_info["n"])
        return web.Response(text=page_html(n), content_type="text/html", charset="utf-8")

    async def _slow(self, request: web.Request) -> web.Response:
        self._count(request)
        await asyncio.sleep(float(request.query.get("s", self.slow_s)))
        n = int(request.match_info["n"])
        return web.Response(text=page_html(n), content_type="text/html", charset="utf-8")

    async def _status(self, request: web.Request) -> web.Response:
        self._count(request)
        code = int(request.match_info["code"])
        headers = (
            {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
        )
        return web.Response(status=code, text=f"status {code}", headers=headers)

    async def _redirect(self, request: web.Request) -> web.Response:
        self._count(request)
        raise web.HTTPFound(request.query["to"])

    async def _plain(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(text="plain words here", content_type="text/plain")

    async def _big(self, request: web.Request) -> web.Response:
        self._count(request)
        kb = int(request.query.get("kb", "2000"))
        return web.Response(
            text="bigword filler text " * (kb * 1024 // 20), content_type="text/plain"
        )
