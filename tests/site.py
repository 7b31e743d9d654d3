"""A real HTTP site on loopback for tests, served from its own thread and event loop.

Its own loop means tests may block (subprocess waits, kill -9) without starving it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gzip
import random
import threading
import time
from collections.abc import Awaitable, Callable
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
        app = self._app()
        # Short shutdown: slow handlers (sleeping pages) must not hold up test teardown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/page/{n}", self._page)
        app.router.add_get("/slow/{n}", self._slow)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/flaky-then-slow/{n}", self._flaky_then_slow)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/big", self._big)
        # Pages built by JavaScript (the render path).
        app.router.add_get("/js/{n}", self._js_page)
        app.router.add_get("/spa/{n}", self._spa_page_with("app.js", root="root"))
        app.router.add_get("/spa-slow/{n}", self._spa_page_with("slow.js"))
        app.router.add_get("/spa-xhr/{n}", self._spa_page_with("xhr.js"))
        app.router.add_get("/spa-chunk/{n}", self._spa_page_with("chunk.js"))
        app.router.add_get("/spa-poll/{n}", self._spa_page_with("poll.js"))
        app.router.add_get("/spa-timer/{n}", self._spa_page_with("timer.js", title="Loading…"))
        app.router.add_get("/spa-interval/{n}", self._spa_page_with("interval.js"))
        app.router.add_get("/spa-raf/{n}", self._spa_page_with("raf.js"))
        app.router.add_get("/spa-promise/{n}", self._spa_page_with("promise.js"))
        app.router.add_get("/spa-import/{n}", self._spa_page_with("import.js"))
        app.router.add_get("/spa-clock/{n}", self._spa_page_with("clock.js"))
        app.router.add_get("/spa-idle/{n}", self._spa_page_with("idle.js"))
        app.router.add_get("/spa-message/{n}", self._spa_page_with("message.js"))
        app.router.add_get("/module/{n}", self._module)
        app.router.add_get("/chunk/{n}", self._chunk)
        app.router.add_get("/borderline/{n}", self._borderline_page)
        app.router.add_get("/docs-page/{n}", self._docs_page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/data/{n}", self._api_data)
        app.router.add_get("/probe", self._probe_page)
        return app

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

    async def _flaky_then_slow(self, request: web.Request) -> web.Response:
        """503 on the first request, then no answer for 30 s (a worker killed meanwhile)."""
        self._count(request)
        if self.hits[request.path] == 1:
            return web.Response(status=503, text="try again")
        await asyncio.sleep(30)
        return web.Response(status=504, text="too late")

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

    # -- JavaScript pages: the HTTP body has (almost) no text, the browser builds it.

    async def _js_page(self, request: web.Request) -> web.Response:
        self._count(request)
        n = int(request.match_info["n"])
        return _html(js_page_html(n))

    def _spa_page_with(
        self, script: str, root: str = "app", title: str = "SPA"
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """An SPA shell: an empty root element and one script that fills it."""

        async def page(request: web.Request) -> web.Response:
            self._count(request)
            return _html(SPA_SHELL.format(root=root, script=f"/static/{script}", title=title))

        return page

    async def _chunk(self, request: web.Request) -> web.Response:
        """A script loaded late (a code-split chunk), answered after ?s= seconds."""
        self._count(request)
        await asyncio.sleep(float(request.query.get("s", "0")))
        n = int(request.match_info["n"])
        return web.Response(text=_CHUNK_JS % (n, WORDS), content_type="application/javascript")

    async def _module(self, request: web.Request) -> web.Response:
        """An ES module for a dynamic import(), answered after ?s= seconds."""
        self._count(request)
        await asyncio.sleep(float(request.query.get("s", "0")))
        n = int(request.match_info["n"])
        return web.Response(text=_MODULE_JS % (n, WORDS), content_type="application/javascript")

    async def _borderline_page(self, request: web.Request) -> web.Response:
        self._count(request)
        n = int(request.match_info["n"])
        return _html(borderline_html(n))

    async def _docs_page(self, request: web.Request) -> web.Response:
        self._count(request)
        n = int(request.match_info["n"])
        return _html(docs_page_html(n))

    async def _static(self, request: web.Request) -> web.Response:
        self._count(request)
        name = request.match_info["name"]
        if name not in STATIC_JS:
            raise web.HTTPNotFound()
        return web.Response(text=STATIC_JS[name], content_type="application/javascript")

    async def _api_data(self, request: web.Request) -> web.Response:
        self._count(request)
        await asyncio.sleep(float(request.query.get("s", "0")))
        n = int(request.match_info["n"])
        return web.json_response({"n": n, "words": [f"apiword{n}", *WORDS]})

    async def _probe_page(self, request: web.Request) -> web.Response:
        """A page whose script and image try another port (given as ?target=URL)."""
        self._count(request)
        target = request.query["target"]
        return _html(
            "<!doctype html><html><head><title>probe</title>"
            f'<script src="{target}/evil.js"></script></head>'
            f'<body><main><h1>probe</h1><img src="{target}/pixel.png"><p id="out">'
            "waiting</p></main><script>"
            f"fetch({target!r} + '/secret').then(r => r.text())"
            ".then(t => { document.getElementById('out').textContent = 'got ' + t; })"
            ".catch(() => { document.getElementById('out').textContent = 'probe blocked'; });"
            f"try {{ new WebSocket({target!r}.replace('http', 'ws') + '/ws'); }} catch (e) {{}}"
            "</script></body></html>"
        )


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the server saw it (monotonic clock of the test process)."""

    path: str
    start: float
    end: float
    status: int


class PoliteSite(LoopbackSite):
    """A loopback host that logs every request's start and end, with a robots.txt the
    test sets, for measuring politeness at the server.

    * ``robots``: (status, body) of /robots.txt; None: 404. ``robots_queue``: answers given
      first, one per request, before ``robots`` (e.g. a 500 then recovery).
      ``robots_redirect``: /robots.txt redirects there (same host) instead.
    * every other path is a page; ``page_s`` is how long it takes, ``hold`` an event that
      pages wait for while it is clear (set by default), ``answers`` statuses (with
      headers) given first, one per page request, before 200.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.robots: tuple[int, str] | None = None
        self.robots_queue: list[tuple[int, str]] = []
        self.robots_redirect: str | None = None
        self.page_s = 0.0
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.log: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._open: dict[int, float] = {}  # in-flight requests: id -> start
        self._hold: asyncio.Event | None = None
        self._lock = threading.Lock()

    def set_hold(self, held: bool) -> None:
        """Hold page answers (True) or let them go (False), from any thread."""

        def apply() -> None:
            assert self._hold is not None
            if held:
                self._hold.clear()
            else:
                self._hold.set()

        self._loop.call_soon_threadsafe(apply)

    def in_flight_since(self) -> float:
        """Start of the oldest request still in flight."""
        with self._lock:
            return min(self._open.values())

    def pages(self) -> list[Request]:
        """Page requests (not robots.txt), in order of arrival."""
        with self._lock:
            return sorted(
                (r for r in self.log if not r.path.startswith("/robots")), key=lambda r: r.start
            )

    def robots_hits(self) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.path.startswith("/robots")]

    def _app(self) -> web.Application:
        self._hold = asyncio.Event()
        self._hold.set()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._any)
        return app

    async def _any(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._open[id(request)] = start
        status = 500
        try:
            response = await self._answer(request)
            status = response.status
            return response
        finally:
            with self._lock:
                self.in_flight -= 1
                self._open.pop(id(request), None)
                self.log.append(Request(request.path, start, time.monotonic(), status))

    async def _answer(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/robots.txt" and self.robots_redirect is not None:
            return web.Response(status=301, headers={"Location": self.robots_redirect})
        if path == "/robots.txt" or (
            self.robots_redirect is not None and path == self.robots_redirect
        ):
            if self.robots_queue:
                status, body = self.robots_queue.pop(0)
            elif self.robots is not None:
                status, body = self.robots
            else:
                status, body = 404, "no robots.txt here"
            return web.Response(status=status, text=body, content_type="text/plain")
        assert self._hold is not None
        await self._hold.wait()
        if self.page_s:
            await asyncio.sleep(self.page_s)
        if self.answers:
            status, headers = self.answers.pop(0)
            return web.Response(status=status, text=f"status {status}", headers=headers)
        n = sum(map(ord, path)) % 1000
        body = page_html(n).replace("<title>", f"<title>{path} ")
        return web.Response(text=body, content_type="text/html", charset="utf-8")


def max_starts_in_window(requests: list[Request], window_s: float = 1.0) -> int:
    """The most request starts that fall in any window of ``window_s`` (closed interval)."""
    starts = sorted(r.start for r in requests)
    best = 0
    j = 0
    for i, t in enumerate(starts):
        while starts[j] < t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8")


SPA_SHELL = (
    '<!doctype html><html lang="en"><head><title>{title}</title></head>'
    '<body><div id="{root}"></div><script src="{script}"></script></body></html>'
)

# Builds the page from its own URL: /spa/7 shows "spaword7" and 300 words.
_APP_JS = """
const n = location.pathname.split('/').pop();
const words = %s;
const main = document.createElement('main');
const h1 = document.createElement('h1');
h1.textContent = 'SPA page ' + n;
const p = document.createElement('p');
const body = Array.from({length: 300}, (_, i) => words[i %% words.length]);
p.textContent = 'spaword' + n + ' ' + body.join(' ');
main.append(h1, p);
document.getElementById('root').append(main);
document.title = 'SPA ' + n;
"""

# Waits for a slow API (0.5 s) before it shows anything: settling must wait for it.
_SLOW_JS = """
const n = location.pathname.split('/').pop();
fetch('/api/data/' + n + '?s=0.5').then(r => r.json()).then(d => {
  const p = document.createElement('p');
  p.textContent = 'slowword' + n + ' ' + d.words.join(' ') + ' ' + d.words.join(' ');
  document.getElementById('app').append(p);
});
"""

# The same slow API through XMLHttpRequest.
_XHR_JS = """
const n = location.pathname.split('/').pop();
const xhr = new XMLHttpRequest();
xhr.open('GET', '/api/data/' + n + '?s=0.5');
xhr.onload = () => {
  const p = document.createElement('p');
  p.textContent = 'xhrword' + n + ' ' + JSON.parse(xhr.responseText).words.join(' ');
  document.getElementById('app').append(p);
};
xhr.send();
"""

# After the load event, a script inserts the chunk that holds the text (slow to arrive).
_CHUNK_LOADER_JS = """
const n = location.pathname.split('/').pop();
window.addEventListener('load', () => setTimeout(() => {
  const s = document.createElement('script');
  s.src = '/chunk/' + n + '?s=0.5';
  document.head.append(s);
}, 0));
"""
_CHUNK_JS = """
const p = document.createElement('p');
p.textContent = 'chunkword%d ' + %r.join(' ');
document.getElementById('app').append(p);
"""

# Text at once, then a request that never ends (a long poll): settling stops at its cap.
_POLL_JS = """
const n = location.pathname.split('/').pop();
const p = document.createElement('p');
p.textContent = 'pollword' + n + ' ' + 'quiet page text '.repeat(40);
document.getElementById('app').append(p);
fetch('/api/data/' + n + '?s=60').catch(() => {});
"""

# The page of issue 15: filled by a 300 ms timer after DOMContentLoaded (title included).
_TIMER_JS = """
const n = location.pathname.split('/').pop();
document.addEventListener('DOMContentLoaded', () => setTimeout(() => {
  const p = document.createElement('p');
  p.textContent = 'timerword' + n + ' ' + 'rendered by a timer '.repeat(30);
  document.getElementById('app').append(p);
  document.title = 'Timer page ' + n;
}, 300));
"""

# Polls every 150 ms until its third tick, then writes the text and stops.
_INTERVAL_JS = """
const n = location.pathname.split('/').pop();
let ticks = 0;
const every = setInterval(() => {
  if (++ticks < 3) return;
  clearInterval(every);
  const p = document.createElement('p');
  p.textContent = 'intervalword' + n + ' ' + 'written on the third tick '.repeat(30);
  document.getElementById('app').append(p);
}, 150);
"""

# Thirty animation frames (~0.5 s at 60 Hz), then the text.
_RAF_JS = """
const n = location.pathname.split('/').pop();
let frames = 0;
const step = () => {
  if (++frames < 30) { requestAnimationFrame(step); return; }
  const p = document.createElement('p');
  p.textContent = 'rafword' + n + ' ' + 'written after thirty frames '.repeat(30);
  document.getElementById('app').append(p);
};
requestAnimationFrame(step);
"""

# A promise chain with a pause in the middle (a 250 ms sleep), as async code writes it.
_PROMISE_JS = """
const n = location.pathname.split('/').pop();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
(async () => {
  let words = [];
  for (let i = 0; i < 50; i++) words = await Promise.resolve([...words, 'chain']);
  await sleep(250);
  const parts = await Promise.all([Promise.resolve('promiseword' + n), sleep(50)]);
  const p = document.createElement('p');
  p.textContent = parts[0] + ' ' + words.join(' ') + ' ' + 'after the chain '.repeat(20);
  document.getElementById('app').append(p);
})();
"""

# After the load event, a dynamic import() of a module that takes 0.5 s to arrive.
_IMPORT_JS = """
const n = location.pathname.split('/').pop();
window.addEventListener('load', () => setTimeout(() => {
  import('/module/' + n + '?s=0.5').then((m) => m.show());
}, 0));
"""
_MODULE_JS = """
export function show() {
  const p = document.createElement('p');
  p.textContent = 'importword%d ' + %r.join(' ');
  document.getElementById('app').append(p);
}
"""

# Text at once, then a clock that ticks forever (slower than the DOM's quiet window):
# settling stops at its timer bound.
_CLOCK_JS = """
const n = location.pathname.split('/').pop();
const p = document.createElement('p');
p.textContent = 'clockword' + n + ' ' + 'a page with a clock '.repeat(30);
const clock = document.createElement('span');
document.getElementById('app').append(p, clock);
setInterval(() => { clock.textContent = String(Date.now()); }, 400);
"""

# Idle callbacks, one after another for 0.4 s (work done in idle time, as a scheduler
# does), then the text: no timer, frame, fetch or DOM change meanwhile.
_IDLE_JS = """
const n = location.pathname.split('/').pop();
const start = performance.now();
const step = () => {
  if (performance.now() - start < 400) { requestIdleCallback(step); return; }
  const p = document.createElement('p');
  p.textContent = 'idleword' + n + ' ' + 'written in idle time '.repeat(30);
  document.getElementById('app').append(p);
};
requestIdleCallback(step);
"""

# Work in message tasks, each posting the next through a MessageChannel for 0.4 s (as
# React's scheduler yields), then the text.
_MESSAGE_JS = """
const n = location.pathname.split('/').pop();
const start = performance.now();
const channel = new MessageChannel();
channel.port1.onmessage = () => {
  if (performance.now() - start < 400) { channel.port2.postMessage(null); return; }
  const p = document.createElement('p');
  p.textContent = 'messageword' + n + ' ' + 'written by a message task '.repeat(30);
  document.getElementById('app').append(p);
};
channel.port2.postMessage(null);
"""

STATIC_JS = {
    "app.js": _APP_JS % repr(WORDS),
    "slow.js": _SLOW_JS,
    "xhr.js": _XHR_JS,
    "chunk.js": _CHUNK_LOADER_JS,
    "poll.js": _POLL_JS,
    "timer.js": _TIMER_JS,
    "interval.js": _INTERVAL_JS,
    "raf.js": _RAF_JS,
    "promise.js": _PROMISE_JS,
    "import.js": _IMPORT_JS,
    "clock.js": _CLOCK_JS,
    "idle.js": _IDLE_JS,
    "message.js": _MESSAGE_JS,
    "theme.js": "document.documentElement.dataset.theme = 'light';",
}


def js_page_html(n: int) -> str:
    """Little text in the HTML, a large inline script that writes the real content."""
    words = ", ".join(repr(w) for w in WORDS * 10)
    return (
        f'<!doctype html><html lang="en"><head><title>JS page {n}</title></head><body>'
        f'<main><h1>JS {n}</h1><div id="content">Loading</div></main><script>'
        f"const words = [{words}];\n"
        f"document.getElementById('content').textContent = 'jsword{n} ' + "
        "Array.from({length: 400}, (_, i) => words[(i * 7) % words.length]).join(' ');"
        "</script></body></html>"
    )


def borderline_html(n: int) -> str:
    """Some text, somewhat more script than text: only a sample render can tell."""
    intro = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(40))
    return (
        f'<!doctype html><html lang="en"><head><title>Borderline {n}</title></head><body>'
        f'<main><h1>Borderline {n}</h1><p>{intro}</p><div id="more"></div></main><script>'
        "const base = document.querySelector('p').textContent.split(' ');\n"
        "const out = [];\n"
        "for (let i = 0; i < 400; i++) { out.push(base[(i * 3) % base.length] + i); }\n"
        f"document.getElementById('more').textContent = 'moreword{n} ' + out.join(' ');\n"
        "/* padding so the script outweighs the visible text of the HTML: "
        + "x" * 200
        + " */</script></body></html>"
    )


def docs_page_html(n: int) -> str:
    """A short page of a static documentation site: its text complete in the HTML, a few
    scripts that change nothing one reads (borderline by the markup, static when rendered)."""
    intro = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(60))
    return (
        f'<!doctype html><html lang="en"><head><title>Docs {n}</title>'
        + '<script src="/static/theme.js"></script>' * 3
        + f"</head><body><main><h1>Docs {n}</h1><p>docsword{n} {intro}</p></main></body></html>"
    )


# --------------------------------------------------------------------------------------
# A site with a known link graph, for crawls


CRAWL_LAST_MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"


class CrawlSite:
    """A docs site under /docs/ whose link graph the tests know (``graph``), served from its
    own thread like LoopbackSite, counting every request by path (``hits``).

    Besides ordinary pages (links written absolute, relative, with fragments and queries it
    drops): links out of the /docs/ prefix (/blog/), to another host (``external``, a port
    that must never see a request), to images, mailto:, rel=nofollow links, a page with
    <meta name=robots content=nofollow>, an <area href>, a <base href>, a redirect
    (/docs/old.html -> /docs/p2.html), robots.txt with a Sitemap: line, a sitemap index
    (a gzip XML sitemap and a text sitemap) and /sitemap.xml, listing orphan pages no link
    reaches. Pages answer ETag / Last-Modified and 304 to a matching If-None-Match.
    """

    def __init__(self, pages: int = 40, seed: int = 7, external: str = "") -> None:
        rng = random.Random(seed)
        self.external = external or "http://127.0.0.1:9/"
        self.paths = ["/docs/index.html"] + [f"/docs/p{i}.html" for i in range(1, pages)]
        # The followable edges: page path -> target paths (redirect source as written).
        self.graph: dict[str, list[str]] = {}
        for i, path in enumerate(self.paths):
            # A chain keeps depths interesting; random cross links make shortcuts.
            targets = [self.paths[i + 1]] if i + 1 < len(self.paths) else []
            targets += rng.sample(self.paths, 2)
            self.graph[path] = list(dict.fromkeys(t for t in targets if t != path))
        specials = {
            "/docs/map.html": ["/docs/area-only.html"],
            "/docs/based.html": ["/docs/sub/x.html"],
            "/docs/meta-nofollow.html": [],
            "/docs/old.html": ["/docs/p2.html"],
            "/docs/area-only.html": [],
            "/docs/sub/x.html": [],
        }
        self.graph.update(specials)
        self.graph["/docs/index.html"] += ["/docs/map.html", "/docs/based.html"]
        self.graph["/docs/p3.html"] += ["/docs/meta-nofollow.html", "/docs/old.html"]
        self.redirects = {"/docs/old.html": "/docs/p2.html"}
        self.never = ["/docs/hidden.html", "/docs/behind-meta.html", "/blog/b1.html"]
        self.orphans = ["/docs/orphan1.html", "/docs/orphan2.html", "/docs/orphan3.html"]
        self.version: dict[str, int] = {}
        self.etag_salt: dict[str, int] = {}
        self.delay_s = 0.0
        self.robots_requests = 0
        self.hits: collections.Counter[str] = collections.Counter()
        self.not_modified: collections.Counter[str] = collections.Counter()
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.hostport}{path}"

    def reachable(self, max_depth: int | None = None) -> dict[str, int]:
        """Path -> shortest click distance from /docs/index.html (redirects keep it)."""
        depth = {"/docs/index.html": 0}
        frontier = ["/docs/index.html"]
        while frontier:
            nxt: list[str] = []
            for path in frontier:
                step = 0 if path in self.redirects else 1
                for target in self.graph.get(path, []):
                    d = depth[path] + step
                    if (max_depth is None or d <= max_depth) and target not in depth:
                        depth[target] = d
                        (frontier if step == 0 else nxt).append(target)
            frontier = nxt
        return depth

    def pages_of(self, reachable: dict[str, int]) -> set[str]:
        """The reachable paths that are pages (a redirect is fetched but indexes nothing)."""
        return {p for p in reachable if p not in self.redirects}

    def change(self, path: str) -> None:
        """New content (and ETag) for ``path``."""
        self.version[path] = self.version.get(path, 0) + 1

    def touch(self, path: str) -> None:
        """A new ETag, the same content."""
        self.etag_salt[path] = self.etag_salt.get(path, 0) + 1

    def __enter__(self) -> CrawlSite:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/sitemap.xml", self._root_sitemap)
        app.router.add_get("/sitemaps/index.xml", self._sitemap_index)
        app.router.add_get("/sitemaps/pages.xml.gz", self._sitemap_gz)
        app.router.add_get("/sitemaps/list.txt", self._sitemap_txt)
        app.router.add_get("/{tail:.*}", self._page)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    async def _robots(self, request: web.Request) -> web.Response:
        # Counted apart: the politeness gate reads it once for the fleet, and a --sitemaps
        # crawl reads it again for its Sitemap: lines; ``hits`` stays the crawl's own pages.
        self.robots_requests += 1
        body = f"User-agent: *\nAllow: /\nSitemap: {self.url('/sitemaps/index.xml')}\n"
        return web.Response(text=body, content_type="text/plain")

    def _urlset(self, paths: list[str]) -> str:
        urls = "".join(f"<url><loc>{self.url(p)}</loc></url>" for p in paths)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
        )

    async def _root_sitemap(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(text=self._urlset(["/docs/orphan3.html"]), content_type="text/xml")

    async def _sitemap_index(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        maps = "".join(
            f"<sitemap><loc>{self.url(p)}</loc></sitemap>"
            for p in ("/sitemaps/pages.xml.gz", "/sitemaps/list.txt")
        )
        return web.Response(
            text='<?xml version="1.0" encoding="UTF-8"?><sitemapindex '
            f'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{maps}</sitemapindex>',
            content_type="application/xml",
        )

    async def _sitemap_gz(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        xml = self._urlset(["/docs/orphan1.html", "/docs/p5.html", "/blog/b9.html"])
        return web.Response(body=gzip.compress(xml.encode()), content_type="application/gzip")

    async def _sitemap_txt(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(text=self.url("/docs/orphan2.html") + "\n", content_type="text/plain")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if path in self.redirects:
            raise web.HTTPMovedPermanently(self.redirects[path])
        known = path in self.graph or path in self.never or path in self.orphans
        if not known:
            raise web.HTTPNotFound()
        etag = f'"v{self.version.get(path, 0)}-{self.etag_salt.get(path, 0)}"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified[path] += 1
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Last-Modified": CRAWL_LAST_MODIFIED}
        return web.Response(
            text=self._html(path), content_type="text/html", charset="utf-8", headers=headers
        )

    def _html(self, path: str) -> str:
        name = path.rsplit("/", 1)[-1].removesuffix(".html")
        head = f"<title>{name}</title>"
        body = [f"<h1>{name}</h1><p>crawlword {name} version {self.version.get(path, 0)}</p>"]
        for i, target in enumerate(self.graph.get(path, [])):
            if path == "/docs/map.html":
                body.append(f'<map name="m"><area href="{target.rsplit("/", 1)[-1]}"></map>')
                continue
            if path == "/docs/based.html":
                head += '<base href="/docs/sub/">'
                body.append('<a href="x.html">x</a>')
                continue
            href = target if i % 3 == 0 else target.removeprefix("/docs/")
            if target.startswith("/docs/sub/"):
                href = target
            suffix = "#part" if i % 2 else ""
            body.append(f'<a href="{href}{suffix}">link {i}</a>')
        if path == "/docs/meta-nofollow.html":
            head += '<meta name="robots" content="noindex, nofollow">'
            body.append('<a href="behind-meta.html">behind</a>')
        body.append('<a href="/blog/b1.html">blog</a>')
        body.append(f'<a href="{self.external}ext/{name}">elsewhere</a>')
        body.append(f'<a href="/docs/pic-{name}.png">picture</a>')
        body.append('<a href="mailto:docs@example.org">mail</a>')
        body.append('<a rel="nofollow" href="/docs/hidden.html">hidden</a>')
        return (
            f'<!doctype html><html lang="en"><head>{head}</head><body><main>'
            + "".join(body)
            + "</main></body></html>"
        )
