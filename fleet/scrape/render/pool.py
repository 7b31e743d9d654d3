"""The browser pool: one Chromium per worker process that renders the pages needing it.

A bounded number of open tabs (a browser context with one page each), contexts recycled
after a page budget, the browser restarted when it crashes, hangs or grows past its memory
cap. The browser's only way out is the worker's guarded forward proxy
(``fleet.scrape.proxy.GuardedProxy``: every host checked like the worker's own fetches):
nothing bypasses it and the browser resolves no names itself (``FENCE_ARGS``), so a page
cannot use it to reach private addresses. No request is intercepted: interception costs a
round trip through Playwright per request and turns Chromium's HTTP cache off.

Playwright is an optional extra: it is imported only when a pool is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import psutil

from fleet.errors import (
    BrowserCrashed,
    FleetError,
    RenderFailed,
    RenderTimeout,
    RenderUnavailable,
)
from fleet.scrape.fetch import FetchResult
from fleet.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Playwright,
    )
from fleet.scrape.render.chromium import (
    CHROMIUM_ARGS,
    FENCE_ARGS,
    RENDER_FIX,
    children,
    chromium_executable,
    gone,
    is_browser_main,
    is_playwright_driver,
    kill_tree,
    new_browser_process,
    process_tree_memory,
)
from fleet.scrape.render.settle import (
    DOM_QUIET_MS,
    PAGE_HTML_JS,
    SETTLE_JS,
    TIMER_MAX_MS,
    TRACKER_JS,
)

log = logging.getLogger(__name__)


MEMORY_CHECK_INTERVAL_S: Final = 10.0


HANG_PROBE_TIMEOUT_S: Final = 5.0


TMPDIR_PREFIX: Final = "fleet-chromium-"


# A reused page's renderer grows ~2 MB per render without a plateau: V8 garbage nobody
# collects (no memory pressure). Collected every GC_EVERY renders, off the render path, it
# stays flat (measured: +16 MB over 240 renders on 4 pages instead of +400 MB), so a page is
# reused up to PAGE_REUSE_LIMIT renders (a context's budget usually comes first).
GC_EVERY: Final = 10


PAGE_REUSE_LIMIT: Final = 100


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered page: its HTML once scripts settled, and the URL the browser ended on."""

    html: str
    final_url: str
    elapsed_ms: float


class BrowserProxy(Protocol):
    """Where the browser's connections go: ``fleet.proxy.GuardedProxy``, started."""

    @property
    def url(self) -> str:
        """The proxy's ``http://127.0.0.1:<port>``, given to Chromium's ``--proxy-server``."""

    def serving(self, document: FetchResult) -> contextlib.AbstractContextManager[None]:
        """While inside, the browser's plain-HTTP GET of ``document.final_url`` gets ``document``.

        The page is then not fetched a second time; over HTTPS the browser fetches it again.
        """

    def loading(self, document_url: str) -> int:
        """Requests of the page at ``document_url`` in flight that its text may wait for."""


class Rendering(Protocol):
    """What the scraper needs to render a page (``BrowserPool``)."""

    async def render(self, url: str, document: FetchResult) -> Rendered:
        """Render ``document``, fetched and checked already, in a browser; returns its HTML.

        Raises ``RenderUnavailable`` when there is no browser at all, or a transient error for this
        page (``RenderTimeout``, ``BrowserCrashed``, ``RenderFailed``).
        """


class RenderTelemetry(Protocol):
    """The pool's counters in the worker's metrics (``Telemetry``)."""

    def browser_restarted(self, cause: str) -> None:
        """A browser was replaced; ``cause`` is ``crash``, ``hang``, ``rss`` or ``driver``."""

    def context_recycled(self) -> None:
        """A tab's context spent its page budget (``render_context_pages``) and was closed."""


@dataclass(eq=False)
class _Tab:
    """A browser context with one page: one render at a time, the page reused.

    One page per context staggers the recycling: the tabs' budgets run out one at a time,
    so one renderer process is replaced at a time instead of all of a shared context's at
    once (measured: a memory saw-tooth of ±15 % and a burst of process start-ups)."""

    context: BrowserContext
    page: Page
    budget: int  # renders before the context is closed (see BrowserPool._staggered)
    gc_phase: int  # offsets the page's collections (see BrowserPool._staggered)
    used: int = 0  # renders started in the context
    page_uses: int = 0  # renders started on the current page

    @property
    def spent(self) -> bool:
        return self.used >= self.budget


@dataclass(eq=False)
class _Session:
    """One launched browser and its tabs."""

    browser: Browser
    process: psutil.Process | None  # the browser's main process
    generation: int
    tmpdir: str  # the browser's TMPDIR, removed when it is closed or killed
    tabs: set[_Tab] = field(default_factory=set)  # open, not closing
    idle: list[_Tab] = field(default_factory=list)  # ready for a render
    # Tabs that count against render_concurrency + 1: opening, idle, rendering or being
    # collected, but not one on its last render (its successor opens beside it).
    slots: int = 0
    opening: bool = False  # a spare tab is being opened in the background
    opened: int = 0  # tabs opened so far (the first ones get staggered budgets)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # a tab went idle or closed
    open_pages: int = 0  # renders in progress
    dead: bool = False  # crashed or hung: every page of it fails
    retired: bool = False  # no new pages; closed when the open ones finish
    closing: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return int(self.process.pid) if self.process is not None else None


class BrowserPool:
    """One Chromium per worker process; pages bounded by ``render_concurrency`` and reused.

    Use as ``async with BrowserPool(settings, proxy) as pool``; ``start`` raises
    RenderUnavailable (with the fix) when Playwright or Chromium is missing. Every
    connection of the browser goes through ``proxy`` (the SSRF fence, ``fleet.proxy``).

    Renders run in tabs: a browser context with one page, reused render after render and
    closed after its budget (render_context_pages). The first render_concurrency tabs of a
    browser get staggered budgets (1/c, 2/c, … of it), so from then on one tab at a time is
    replaced: one renderer process starting instead of a context's worth, and the memory
    flat instead of a saw-tooth. Nothing of a tab's lifecycle waits on the render path: a
    page's V8 garbage is collected every GC_EVERY renders while it is out of the idle list
    (instead of replacing the page, which costs a renderer process); one spare tab is kept
    open ahead (at most render_concurrency + 1 tabs, a render waits for the spare rather
    than opening more); a tab on its last render gives up its place, so its successor opens
    beside it; spent tabs close in the background.
    """

    def __init__(
        self,
        settings: Settings,
        proxy: BrowserProxy,
        *,
        environ: Mapping[str, str],
        telemetry: RenderTelemetry | None = None,
        memory_check_interval_s: float = MEMORY_CHECK_INTERVAL_S,
    ) -> None:
        self._settings = settings
        # The browser's environment (the CLI passes its process's), but for TMPDIR.
        self._environ = dict(environ)
        self._proxy = proxy
        self._telemetry = telemetry
        self._memory_check_interval_s = memory_check_interval_s
        self._pages = asyncio.Semaphore(settings.render_concurrency)
        self._launch_lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._driver: psutil.Process | None = None  # Playwright's driver process
        self._session: _Session | None = None
        self._sessions: set[_Session] = set()
        self._closing: set[asyncio.Task[None]] = set()
        # Off the render path: spare pages being opened, retired pages and contexts closing.
        self._background: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._last_memory_check = 0.0
        self._closed = False
        self._unusable: RenderUnavailable | None = None
        # Counters, read by tests and `bench.render`.
        self.restarts: dict[str, int] = {}
        self.recycles = 0
        self.rendered = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def browser_pid(self) -> int | None:
        """PID of the current browser's main process; None when none is running."""
        return self._session.pid if self._session is not None else None

    async def start(self, *, launch: bool = True) -> None:
        """Import Playwright, find Chromium and (``launch``) start it now, so a broken
        setup fails at start. Without ``launch`` (auto mode: most pages never need it)
        Playwright's driver and the browser start with the first page that does; if they
        cannot, rendering is off for good (``RenderUnavailable`` from then on, one warning)."""
        try:
            import playwright.async_api  # noqa: F401, PLC0415
        except ImportError:
            raise RenderUnavailable(
                f"rendering needs Playwright, which is not installed: {RENDER_FIX}"
            ) from None
        executable = chromium_executable(self._settings)
        if executable is not None and not os.access(executable, os.X_OK):
            raise RenderUnavailable(f"no Chromium at {executable}: {RENDER_FIX}")
        if not launch:
            return  # the driver too starts with the first page that needs a browser
        try:
            await self._start_driver()
        except Exception as exc:  # e.g. the driver's node binary cannot load its libraries
            raise RenderUnavailable(
                f"cannot start Playwright's driver ({_first_line(exc)}): {RENDER_FIX}"
            ) from None
        try:
            await self._ensure_session()
        except Exception as exc:
            await self.close()
            raise RenderUnavailable(
                f"cannot launch Chromium ({_first_line(exc)}): {RENDER_FIX}"
            ) from None

    async def close(self) -> None:
        """Close every browser; what does not exit is killed and reaped."""
        self._closed = True
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
        for session in list(self._sessions):
            self._schedule_close(session)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=10)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._playwright.stop()
            self._playwright = None

    async def _start_driver(self) -> None:
        """Start Playwright (its driver: a node process that talks to the browsers)."""
        from playwright.async_api import async_playwright  # noqa: PLC0415

        before = await asyncio.to_thread(children, is_playwright_driver)
        self._playwright = await async_playwright().start()
        found = await asyncio.to_thread(children, is_playwright_driver)
        self._driver = next((proc for proc in found.values() if proc.pid not in before), None)

    def _driver_lost(self) -> bool:
        """Whether Playwright's driver died (killed, out of memory); if so, so did every
        browser it drove, for the pool's purposes: they are marked dead and restarted."""
        if self._driver is None:
            return False
        if not gone(self._driver):
            return False
        for session in list(self._sessions):
            if not session.dead:
                session.dead = True
                self._restart(session, "driver")
        return True

    async def _restart_driver(self) -> None:
        old, self._playwright = self._playwright, None
        pid, self._driver = (self._driver.pid if self._driver else None), None
        log.warning("Playwright's driver (pid %s) is gone: starting a new one", pid)
        if old is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await old.stop()
        await self._start_driver()

    async def _launch(self) -> _Session:
        assert self._playwright is not None
        before = set(await asyncio.to_thread(children, is_browser_main))
        # Chromium's own temporary files (.org.chromium.Chromium.* directories) go to a
        # directory of this browser's, removed with it: a killed browser leaves them behind.
        tmpdir = await asyncio.to_thread(tempfile.mkdtemp, prefix=TMPDIR_PREFIX)
        try:
            browser = await self._playwright.chromium.launch(
                executable_path=chromium_executable(self._settings),
                headless=True,
                args=[*self._launch_args()],
                # Its own temporary directory, removed with it (a killed browser leaves
                # its /tmp/org.chromium.Chromium.* behind otherwise).
                env={**self._environ, "TMPDIR": tmpdir},
                handle_sigterm=False,  # the worker drains on SIGTERM, then closes the pool
                handle_sigint=False,
                handle_sighup=False,
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmpdir, True)
            raise
        process = await asyncio.to_thread(new_browser_process, before)
        self._generation += 1
        session = _Session(browser, process, self._generation, tmpdir)
        browser.on("disconnected", lambda _: self._on_disconnected(session))
        self._sessions.add(session)
        log.info(
            "browser started (pid %s, generation %d, %s)",
            session.pid,
            session.generation,
            chromium_executable(self._settings) or "Playwright's Chromium",
        )
        return session

    def _launch_args(self) -> list[str]:
        args = [*CHROMIUM_ARGS, *FENCE_ARGS, f"--proxy-server={self._proxy.url}"]
        if self._settings.render_block_media:
            # Images are never requested (no proxy can tell an image from a script inside
            # an HTTPS tunnel, so the browser is told not to load them).
            args.append("--blink-settings=imagesEnabled=false")
        return args

    def _on_disconnected(self, session: _Session) -> None:
        if session.dead or session.retired or self._closed:
            return
        session.dead = True
        self._restart(session, "crash")

    def _restart(self, session: _Session, cause: str) -> None:
        """Stop giving the session new pages; the next page launches a fresh browser."""
        log.warning("restarting the browser (pid %s): %s", session.pid, cause)
        self.restarts[cause] = self.restarts.get(cause, 0) + 1
        if self._telemetry is not None:
            self._telemetry.browser_restarted(cause)
        session.retired = True
        session.ready.set()  # renders waiting for a tab look again (a dead browser has none)
        if self._session is session:
            self._session = None
        if session.dead or session.open_pages == 0:
            self._schedule_close(session)

    def _schedule_close(self, session: _Session) -> None:
        if session.closing is None:
            session.closing = asyncio.create_task(self._close_session(session))
            self._closing.add(session.closing)
            session.closing.add_done_callback(self._closing.discard)

    async def _close_session(self, session: _Session) -> None:
        self._sessions.discard(session)
        if not session.dead:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await session.browser.close()
        if session.process is not None:
            # Chromium exits on its own after close; a crashed or hung one may not.
            await asyncio.to_thread(kill_tree, session.process)
        await asyncio.to_thread(shutil.rmtree, session.tmpdir, True)

    async def _ensure_session(self) -> _Session:
        session = self._session
        if session is not None and not session.retired:
            return session
        async with self._launch_lock:
            if self._playwright is None and not self._closed:
                await self._start_driver()
            elif self._driver_lost():
                await self._restart_driver()
            if self._session is None or self._session.retired:
                self._session = await self._launch()
            return self._session

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        # Failures are seen where they matter (a next context that fails is opened again
        # on the render path); never "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def _staggered(self, session: _Session) -> tuple[int, int]:
        """A new tab's budget and collection phase. Tabs opened together render at the same
        pace: left alone they would run out together and collect their garbage together
        (a memory saw-tooth as wide as all of them). So a browser's first
        render_concurrency tabs get 1/c, 2/c, … of render_context_pages, and every tab's
        collections are offset by its place: from then on they run out, and collect, one
        at a time."""
        budget, lanes = self._settings.render_context_pages, self._settings.render_concurrency
        k, session.opened = session.opened, session.opened + 1
        if k < lanes:
            budget = max(1, budget * (k + 1) // lanes)
        return budget, k * GC_EVERY // lanes % GC_EVERY

    async def _open_tab(self, session: _Session) -> _Tab:
        session.slots += 1
        try:
            context = await session.browser.new_context(
                java_script_enabled=True,
                # A service worker would outlive the page and answer from its own cache.
                service_workers="block",
                user_agent=self._settings.user_agent,
            )
            try:
                await context.add_init_script(TRACKER_JS)
                page = await context.new_page()
            except Exception:
                self._spawn(self._close_quietly(context.close()))
                raise
        except Exception:
            session.slots -= 1
            session.ready.set()  # a render waiting for this tab opens its own
            raise
        tab = _Tab(context, page, *self._staggered(session))
        session.tabs.add(tab)
        return tab

    async def _take_tab(self, session: _Session) -> _Tab:
        # At render_concurrency + 1 tabs (a spare opening or a tab being collected), wait
        # for one of them rather than opening yet another.
        while (
            not session.idle
            and not session.dead
            and session.slots > self._settings.render_concurrency
        ):
            session.ready.clear()
            async with asyncio.timeout(self._settings.render_timeout_s):
                await session.ready.wait()
        tab = session.idle.pop() if session.idle else await self._open_tab(session)
        tab.used += 1
        tab.page_uses += 1
        if tab.spent:
            session.slots -= 1  # its last render: the next tab opens beside it, now
        self._keep_spare(session, successor=tab.spent)
        return tab

    def _keep_spare(self, session: _Session, *, successor: bool = False) -> None:
        """Keep one idle tab ready, opened off the render path (at most
        render_concurrency + 1 tabs, plus those on their last render). A ``successor``
        opens even beside an idle spare: the tab it replaces is on its last render, and the
        renderer count stays put instead of dipping until the spare is used up."""
        if (
            (successor or not session.idle)
            and not session.opening
            and not session.retired
            and not session.dead
            and session.slots <= self._settings.render_concurrency
        ):
            session.opening = True
            self._spawn(self._open_spare(session))

    async def _open_spare(self, session: _Session) -> None:
        session.opening = True
        try:
            tab = await self._open_tab(session)
        except Exception:
            return
        finally:
            session.opening = False
        self._idle(session, tab)

    def _idle(self, session: _Session, tab: _Tab) -> None:
        if session.retired or session.dead:
            self._close_tab(session, tab)
        else:
            session.idle.append(tab)
        session.ready.set()

    def _close_tab(self, session: _Session, tab: _Tab) -> None:
        """Close a tab's context in the background (not when its browser is dead: closing
        the browser takes everything)."""
        if tab not in session.tabs:
            return
        session.tabs.discard(tab)
        if not tab.spent:
            session.slots -= 1  # a spent tab gave its slot up at its last render
        if not session.dead:
            self._spawn(self._close_quietly(tab.context.close()))

    async def _refresh(self, session: _Session, tab: _Tab) -> None:
        """Collect the page's V8 garbage (its renderer's growth) or, at PAGE_REUSE_LIMIT,
        replace the page in the same context; then the tab is idle again."""
        try:
            async with asyncio.timeout(5):
                if tab.page_uses >= PAGE_REUSE_LIMIT:
                    old, tab.page = tab.page, await tab.context.new_page()
                    tab.page_uses = 0
                    self._spawn(self._close_quietly(old.close()))
                else:
                    cdp = await tab.context.new_cdp_session(tab.page)
                    await cdp.send("HeapProfiler.collectGarbage")
                    await cdp.detach()
        except Exception:
            self._close_tab(session, tab)
            session.ready.set()
            self._keep_spare(session)
            return
        self._idle(session, tab)

    @staticmethod
    async def _close_quietly(closing: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await closing

    @staticmethod
    def _needs_refresh(tab: _Tab) -> bool:
        """Every GC_EVERY renders of a page its garbage is collected: a full GC, ~5 ms of
        CPU per page rendered at GC_EVERY 10 (measured), so not for a page that closes
        within GC_EVERY more renders anyway (its tab's budget)."""
        if tab.page_uses >= PAGE_REUSE_LIMIT:
            return tab.budget - tab.used > GC_EVERY  # else its context closes soon enough
        due = (tab.page_uses + tab.gc_phase) % GC_EVERY == 0
        return due and tab.budget - tab.used > GC_EVERY

    def _give_back(self, session: _Session, tab: _Tab, ok: bool) -> None:
        """Return a tab after a render; nothing here waits on the browser."""
        if ok and not tab.spent and not session.retired and not session.dead:
            if self._needs_refresh(tab):
                self._spawn(self._refresh(session, tab))  # idle again after that
            else:
                session.idle.append(tab)  # the next render reuses it
        else:
            # Spent, or its page failed (whatever state it is in goes with the context).
            if tab.spent and not session.dead:
                self.recycles += 1
                if self._telemetry is not None:
                    self._telemetry.context_recycled()
            self._close_tab(session, tab)
            self._keep_spare(session)
        session.ready.set()

    async def render(self, url: str, document: FetchResult) -> Rendered:
        """Render an already fetched document (our fetch, our checks) in a browser page."""
        async with self._pages:
            if self._closed:
                raise RenderFailed(f"browser pool closed before rendering {url}")
            if self._unusable is not None:
                raise self._unusable
            try:
                session = await self._ensure_session()
            except Exception as exc:
                if self._generation == 0:
                    # Never launched: a broken setup, not a passing failure.
                    self._unusable = RenderUnavailable(
                        f"cannot launch Chromium ({_first_line(exc)}): {RENDER_FIX}"
                    )
                    log.warning("%s; pages that need rendering get the HTTP result", self._unusable)
                    raise self._unusable from None
                raise RenderFailed(
                    f"cannot start the browser to render {url}: {_first_line(exc)}",
                    reason="browser_start",
                ) from exc
            session.open_pages += 1
            started = time.perf_counter()
            ok = False
            try:
                try:
                    tab = await self._take_tab(session)
                except Exception as exc:
                    raise self._failure(session, url, exc) from exc
                try:
                    html, final_url = await self._render_page(session, tab.page, document)
                    ok = True
                finally:
                    self._give_back(session, tab, ok)
            finally:
                session.open_pages -= 1
                if session.retired and session.open_pages == 0:
                    self._schedule_close(session)
            self.rendered += 1
            await self._check_memory(session)
            return Rendered(html, final_url, (time.perf_counter() - started) * 1000)

    async def _render_page(
        self, session: _Session, page: Page, document: FetchResult
    ) -> tuple[str, str]:
        # The proxy answers the browser's request for the document with the worker's copy
        # (plain HTTP; over HTTPS the browser fetches it again, through the proxy).
        url = document.final_url
        try:
            with self._proxy.serving(document):
                async with asyncio.timeout(self._settings.render_timeout_s):
                    await page.goto(url, wait_until="load")
                    await self._settle(page, url)
                    html = await page.evaluate(PAGE_HTML_JS)
                    if not isinstance(html, str):
                        html = await page.content()
        except TimeoutError:
            if session.dead:
                raise BrowserCrashed(f"browser died while rendering {url}") from None
            if not await self._responsive(session):
                session.dead = True
                self._restart(session, "hang")
                raise BrowserCrashed(f"browser hung while rendering {url}") from None
            raise RenderTimeout(
                f"render of {url} took over {self._settings.render_timeout_s:g}s"
            ) from None
        except Exception as exc:
            raise self._failure(session, url, exc) from exc
        if self._died(session):
            # Its requests failed with it, so the page may have settled half-built.
            raise BrowserCrashed(f"browser died while rendering {url}")
        return html, page.url

    def _died(self, session: _Session) -> bool:
        """Whether the browser is gone, noticed before Playwright's disconnect event: the
        replies it sent just before dying are still delivered after it (seen: a page whose
        API call failed as the browser was killed, settled and returned without its text)."""
        if self._driver_lost() or session.dead or not session.browser.is_connected():
            return True
        if session.process is None or not gone(session.process):
            return False
        session.dead = True
        self._restart(session, "crash")
        return True

    def _failure(self, session: _Session, url: str, exc: BaseException) -> FleetError:
        if self._driver_lost() or session.dead or not session.browser.is_connected():
            return BrowserCrashed(f"browser died while rendering {url}: {_first_line(exc)}")
        return RenderFailed(f"render of {url} failed: {_first_line(exc)}")

    async def _settle(self, page: Page, url: str) -> None:
        """Wait until the DOM is quiet and nothing the text may wait for is pending (in the
        page, and at the proxy: a dynamic import() the page cannot see until it ends), at
        most settle_max_s (then the page is taken as it is)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.render_settle_max_s):
                while True:
                    await page.evaluate(SETTLE_JS, [DOM_QUIET_MS, TIMER_MAX_MS])
                    if not self._proxy.loading(url):
                        return
                    # A counter shared by every tab, polled: an event per origin would
                    # cost every proxied request more than this costs the rare wait.
                    while self._proxy.loading(url):  # noqa: ASYNC110
                        await asyncio.sleep(DOM_QUIET_MS / 1000)

    async def _responsive(self, session: _Session) -> bool:
        """After a timeout: is the browser itself still answering?"""
        try:
            async with asyncio.timeout(HANG_PROBE_TIMEOUT_S):
                cdp = await session.browser.new_browser_cdp_session()
                await cdp.send("Browser.getVersion")
                await cdp.detach()
            return True
        except Exception:
            return False

    async def _check_memory(self, session: _Session) -> None:
        now = time.monotonic()
        if session.pid is None or session.retired:
            return
        if now - self._last_memory_check < self._memory_check_interval_s:
            return
        self._last_memory_check = now
        limit = self._settings.browser_max_rss_mb * 1024 * 1024
        used = await asyncio.to_thread(process_tree_memory, session.pid, limit)
        if used > limit:
            log.info(
                "browser memory %d MB over browser_max_rss_mb=%d",
                used // 2**20,
                self._settings.browser_max_rss_mb,
            )
            self._restart(session, "rss")


# What `fleet check worker` renders: its text exists only once the script ran.
PROBE_HTML: Final = (
    "<!doctype html><title>fleet</title><p id=probe></p><script>"
    "document.getElementById('probe').textContent = 'rendered ' + (6 * 7)</script>"
)


async def probe_browser(
    settings: Settings, proxy: BrowserProxy, *, environ: Mapping[str, str]
) -> str:
    """Launch a browser as a worker would, render a data: URL whose script writes its text,
    close it; returns what was checked. Raises ``RenderUnavailable`` (with the fix) when
    Playwright or Chromium is missing or cannot launch, ``RenderFailed`` when the page did
    not render (`fleet check worker`)."""
    url = "data:text/html," + urllib.parse.quote(PROBE_HTML)
    document = FetchResult(url, url, 200, "text/html", "utf-8", PROBE_HTML.encode(), 0.0, 0)
    started = time.perf_counter()
    async with BrowserPool(settings.replace(render_concurrency=1), proxy, environ=environ) as pool:
        rendered = await pool.render(url, document)
    if "rendered 42" not in rendered.html:
        raise RenderFailed("the browser rendered a page without running its script")
    executable = chromium_executable(settings) or "Playwright's Chromium"
    elapsed = time.perf_counter() - started
    return f"browser {executable} (launched, rendered a page, closed: {elapsed:.1f}s)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
