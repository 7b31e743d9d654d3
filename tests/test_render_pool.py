"""The browser pool with a real Chromium: context recycling, restarts on memory, crash and
hang, the SSRF fence around the browser, and no browser process left behind by a worker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from fleet.errors import BrowserCrashed, RenderUnavailable, TransientError
from fleet.scrape import extract
from fleet.scrape.fetch import Fetcher
from fleet.scrape.proxy import GuardedProxy
from fleet.scrape.render.chromium import (
    CHROMIUM_ARGS,
    FENCE_ARGS,
    children,
    chromium_executable,
    is_playwright_driver,
)
from fleet.scrape.render.pool import (
    GC_EVERY,
    PAGE_REUSE_LIMIT,
    TMPDIR_PREFIX,
    BrowserPool,
    _Session,
    _Tab,
)
from fleet.scrape.render.settle import PAGE_HTML_JS, TIMER_MAX_MS
from fleet.settings import Settings
from fleet.telemetry import Metrics, Telemetry
from tests.conftest import Roles, need_browser, wait_for
from tests.pipeline_helpers import (
    cli_json,
    get_status,
    indexed_urls,
    result_pages,
    wait_indexed,
    write_urls,
)
from tests.site import LoopbackSite

if TYPE_CHECKING:
    from playwright.async_api import Page


def site_settings(site: LoopbackSite, **overrides: object) -> Settings:
    return Settings(allow_hosts=(site.hostport,), render_concurrency=4).replace(**overrides)


class Rig:
    """A pool plus the guarded fetcher that hands it documents, for in-process tests."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None, **kw: float) -> None:
        self.settings = settings
        self.fetcher = Fetcher(settings)
        self.browser_fetcher = Fetcher(settings)
        self.proxy = GuardedProxy(settings, self.browser_fetcher)
        self.pool = BrowserPool(settings, self.proxy, environ=os.environ, telemetry=telemetry, **kw)

    async def start(self, *, launch: bool = True) -> None:
        await self.proxy.start()
        await self.pool.start(launch=launch)

    async def render_text(self, url: str) -> str:
        doc = await self.fetcher.fetch(url)
        rendered = await self.pool.render(url, doc)
        ex = extract.extract(
            rendered.html.encode(),
            final_url=doc.final_url,
            content_type="text/html",
            charset="utf-8",
            max_links=10,
        )
        return ex.text

    async def close(self) -> None:
        await self.pool.close()
        await self.proxy.close()
        await self.browser_fetcher.close()
        await self.fetcher.close()


@pytest.fixture
async def rig_factory() -> AsyncIterator[list[Rig]]:
    need_browser()
    rigs: list[Rig] = []
    try:
        yield rigs
    finally:
        for rig in rigs:
            await rig.close()


async def start_rig(rigs: list[Rig], settings: Settings, **kw: object) -> Rig:
    rig = Rig(settings, **kw)  # type: ignore[arg-type]
    rigs.append(rig)
    await rig.start()
    return rig


def browser_mains(pid: int) -> list[psutil.Process]:
    """Chromium main processes below ``pid`` (python → playwright driver → chromium)."""
    out = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if any("--remote-debugging-pipe" in a for a in cmd) and not any(
            a.startswith("--type=") for a in cmd
        ):
            out.append(proc)
    return out


async def test_context_budget_recycles(site: LoopbackSite, rig_factory: list[Rig]) -> None:
    # One render at a time: a context budget of 5 over 50 pages recycles 10 times.
    metrics = Metrics()
    rig = await start_rig(
        rig_factory,
        site_settings(site, render_context_pages=5, render_concurrency=1),
        telemetry=Telemetry("worker", metrics=metrics),
    )
    texts = [await rig.render_text(site.url(f"/spa/{n}")) for n in range(50)]
    assert all(f"spaword{n}" in t for n, t in enumerate(texts))
    assert rig.pool.recycles == 10
    assert metrics.registry.get_sample_value("fleet_browser_context_recycles_total") == 10
    assert rig.pool.restarts == {}


def recording_tabs(pool: BrowserPool) -> list[_Tab]:
    """Every tab ``pool`` opens from now on, in order."""
    tabs: list[_Tab] = []
    open_tab = pool._open_tab

    async def recording(session: _Session) -> _Tab:
        tab = await open_tab(session)
        tabs.append(tab)
        return tab

    pool._open_tab = recording  # type: ignore[method-assign]
    return tabs


async def test_concurrent_contexts_recycle_staggered_within_budget(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # Four renders at a time, a budget of 8: the first four contexts get 2, 4, 6 and 8
    # renders, so later on they run out one at a time rather than all four together.
    assert GC_EVERY == 10
    rig = await start_rig(rig_factory, site_settings(site, render_context_pages=8))
    tabs = recording_tabs(rig.pool)
    most_open = 0

    async def render(n: int) -> str:
        nonlocal most_open
        text = await rig.render_text(site.url(f"/spa/{n}"))
        session = rig.pool._session
        assert session is not None
        most_open = max(most_open, session.slots)
        return text

    texts = await asyncio.gather(*(render(n) for n in range(80)))
    assert all(f"spaword{n}" in t for n, t in enumerate(texts))
    assert [tab.budget for tab in tabs[:4]] == [2, 4, 6, 8]
    assert {tab.budget for tab in tabs[4:]} == {8}
    # Their collections are offset the same way (GC_EVERY 10 over 4 tabs).
    assert [tab.gc_phase for tab in tabs[:4]] == [0, 2, 5, 7]
    assert all(tab.used <= tab.budget for tab in tabs)
    assert sum(tab.used for tab in tabs) == 80
    assert rig.pool.recycles == sum(tab.spent for tab in tabs) >= (80 - 5 * 8) // 8
    assert most_open <= rig.settings.render_concurrency + 1
    assert rig.pool.restarts == {}


async def test_pages_are_reused_past_a_collection_and_bounded(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # 60 renders on 4 pages: each page's garbage is collected every GC_EVERY renders
    # (off the render path) instead of the page being replaced; at most one spare tab.
    rig = await start_rig(rig_factory, site_settings(site, render_context_pages=1000))
    tabs = recording_tabs(rig.pool)
    texts = await asyncio.gather(*(rig.render_text(site.url(f"/spa/{n}")) for n in range(60)))
    assert all(f"spaword{n}" in t for n, t in enumerate(texts))
    assert len(tabs) <= rig.settings.render_concurrency + 1
    # So some page served more than GC_EVERY renders: collected, not replaced.
    assert max(tab.page_uses for tab in tabs) > GC_EVERY
    assert rig.pool.recycles == 0
    assert rig.pool.restarts == {}


@pytest.mark.parametrize(
    ("path", "word"),
    [("/spa-slow/4", "slowword4"), ("/spa-xhr/5", "xhrword5"), ("/spa-chunk/6", "chunkword6")],
    ids=["fetch", "xhr", "late-script"],
)
async def test_settling_waits_for_what_the_text_waits_for(
    site: LoopbackSite, rig_factory: list[Rig], path: str, word: str
) -> None:
    # Each page's text arrives 0.5 s after the load event (a fetch, an XHR, a script added
    # after load): far beyond the DOM's quiet window (DOM_QUIET_MS), so only the pending
    # count waits.
    rig = await start_rig(rig_factory, site_settings(site))
    assert word in await rig.render_text(site.url(path))


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("/spa-interval/2", "intervalword2"),
        ("/spa-raf/3", "rafword3"),
        ("/spa-promise/4", "promiseword4"),
        ("/spa-import/5", "importword5"),
        ("/spa-idle/6", "idleword6"),
        ("/spa-message/7", "messageword7"),
    ],
    ids=[
        "setInterval",
        "requestAnimationFrame",
        "promise-chain",
        "dynamic-import",
        "idle-callbacks",
        "message-tasks",
    ],
)
async def test_settling_waits_for_timers_frames_promises_and_imports(
    site: LoopbackSite, rig_factory: list[Rig], path: str, word: str
) -> None:
    # Each page writes its text 0.3-0.5 s after the load event, with no fetch or script
    # element pending meanwhile: only the tracked timers, frames, idle callbacks, message
    # tasks and import() wait for it.
    rig = await start_rig(rig_factory, site_settings(site))
    assert word in await rig.render_text(site.url(path))


def page_showing(rig: Rig, path: str) -> Page:
    """The open tab's page that last rendered ``path``."""
    session = next(iter(rig.pool._sessions))
    return next(t.page for t in session.tabs if t.page.url.endswith(path))


async def test_a_body_read_counts_until_the_body_has_arrived(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # fetch() resolves with the headers; over HTTPS (a tunnel the proxy cannot see into)
    # the body may still be on its way, and the text waits for it. A body that has not
    # arrived (a stream not yet closed) counts in the page's tracker until it has.
    rig = await start_rig(rig_factory, site_settings(site))
    await rig.render_text(site.url("/spa/1"))
    page = page_showing(rig, "/spa/1")
    busy = await page.evaluate(
        """async () => {
          let feed;
          const body = new ReadableStream({start(c) { feed = c; }});
          const reading = new Response(body).text();
          const during = window.__fleetBusy(Infinity);
          feed.enqueue(new TextEncoder().encode('late body')); feed.close();
          const text = await reading;
          return [during, window.__fleetBusy(Infinity), text];
        }"""
    )
    assert busy == [1, 0, "late body"]


async def test_the_html_is_read_in_the_page_and_matches_playwrights(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # The pool reads the HTML with built-ins taken before the page's scripts ran (a page
    # replacing them cannot break it), and it is what page.content() gives.
    rig = await start_rig(rig_factory, site_settings(site))
    await rig.render_text(site.url("/spa/2"))
    page = page_showing(rig, "/spa/2")
    await page.evaluate("() => { XMLSerializer.prototype.serializeToString = () => 'x'; }")
    ours = await page.evaluate(PAGE_HTML_JS)
    await page.evaluate("() => { delete XMLSerializer.prototype.serializeToString; }")
    assert ours.startswith("<!DOCTYPE html><html")
    assert "spaword2" in ours
    assert ours == await page.content()


async def test_a_page_filled_by_a_300_ms_timer_is_indexed_rendered(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # Issue 15: the script fills the page in a setTimeout(…, 300) after DOMContentLoaded;
    # the HTTP body says "Loading…" and has no text.
    rig = await start_rig(rig_factory, site_settings(site))
    url = site.url("/spa-timer/1")
    doc = await rig.fetcher.fetch(url)
    rendered = await rig.pool.render(url, doc)
    ex = extract.extract(
        rendered.html.encode(),
        final_url=doc.final_url,
        content_type="text/html",
        charset="utf-8",
        max_links=10,
    )
    assert ex.title == "Timer page 1"
    assert ex.text.startswith("timerword1 rendered by a timer")


async def test_settling_stops_at_the_timer_bound_on_a_clock_that_ticks_forever(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # A 400 ms interval never ends: timers count only while due within TIMER_MAX_MS of the
    # settle's start, so the render ends near that bound, well before render_settle_max_s.
    rig = await start_rig(rig_factory, site_settings(site, render_settle_max_s=20.0))
    started = asyncio.get_running_loop().time()
    assert "clockword6" in await rig.render_text(site.url("/spa-clock/6"))
    elapsed = asyncio.get_running_loop().time() - started
    assert TIMER_MAX_MS / 1000 <= elapsed < 10


async def test_settling_stops_at_its_cap_on_a_request_that_never_ends(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    rig = await start_rig(rig_factory, site_settings(site, render_settle_max_s=1.0))
    started = asyncio.get_running_loop().time()
    assert "pollword7" in await rig.render_text(site.url("/spa-poll/7"))
    assert asyncio.get_running_loop().time() - started < 5  # the long poll lasts 60 s
    # And the page is fine for the next render.
    assert "spaword8" in await rig.render_text(site.url("/spa/8"))


@pytest.mark.parametrize(
    ("budget", "used", "page_uses", "phase", "refresh"),
    [
        (100, 20, 20, 0, True),  # every GC_EVERY renders of a page
        (100, 21, 21, 0, False),
        (100, 23, 23, 7, True),  # … offset by the tab's phase
        (100, 90, 90, 0, False),  # the context closes within GC_EVERY renders anyway
        (1000, 500, PAGE_REUSE_LIMIT, 0, True),  # the page is replaced in its context
        (1000, 995, PAGE_REUSE_LIMIT, 0, False),  # … unless the context closes soon
    ],
)
def test_no_collection_for_a_page_about_to_close(
    budget: int, used: int, page_uses: int, phase: int, refresh: bool
) -> None:
    tab = _Tab(
        context=None,  # type: ignore[arg-type]
        page=None,  # type: ignore[arg-type]
        budget=budget,
        gc_phase=phase,
        used=used,
        page_uses=page_uses,
    )
    assert BrowserPool._needs_refresh(tab) is refresh


async def test_memory_cap_restarts_the_browser_and_pages_still_succeed(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    metrics = Metrics()
    rig = await start_rig(
        rig_factory,
        site_settings(site, browser_max_rss_mb=1),
        telemetry=Telemetry("worker", metrics=metrics),
        memory_check_interval_s=0.0,
    )
    first = rig.pool.browser_pid
    for n in range(4):
        assert f"spaword{n}" in await rig.render_text(site.url(f"/spa/{n}"))
    assert rig.pool.restarts.get("rss", 0) >= 3
    assert metrics.registry.get_sample_value("fleet_browser_restarts_total", {"cause": "rss"})
    assert rig.pool.browser_pid != first

    async def first_gone() -> bool:
        return _zombie_or_gone(first)

    await wait_for(first_gone, timeout=10)


def _zombie_or_gone(pid: int | None) -> bool:
    try:
        return pid is None or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_killed_browsers_temporary_directory_is_removed(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    rig = await start_rig(rig_factory, site_settings(site))
    assert "spaword1" in await rig.render_text(site.url("/spa/1"))
    victim = rig.pool.browser_pid
    assert victim is not None
    # Chromium writes its temporary files (/tmp/org.chromium.Chromium.*) under its TMPDIR:
    # the pool gives each browser its own.
    tmpdir = Path(psutil.Process(victim).environ()["TMPDIR"])
    assert tmpdir.name.startswith(TMPDIR_PREFIX) and tmpdir.is_dir()
    litter = tmpdir / "org.chromium.Chromium.abc123"  # what a killed browser leaves there
    litter.mkdir()
    (litter / "SingletonSocket").write_text("")
    for proc in [*psutil.Process(victim).children(recursive=True), psutil.Process(victim)]:
        proc.kill()

    async def removed() -> bool:
        return not tmpdir.exists()

    await wait_for(removed, timeout=15)
    # The next page gets a new browser, with a directory of its own.
    assert "spaword2" in await rig.render_text(site.url("/spa/2"))
    fresh = rig.pool.browser_pid
    assert fresh is not None and fresh != victim
    assert Path(psutil.Process(fresh).environ()["TMPDIR"]).is_dir()


@pytest.mark.parametrize("wrapped", [False, True], ids=["binary", "wrapper-script"])
async def test_crash_fails_the_page_as_transient_and_the_pool_recovers(
    site: LoopbackSite, rig_factory: list[Rig], tmp_path: Path, wrapped: bool
) -> None:
    settings = site_settings(site)
    binary = chromium_executable(settings)
    if wrapped:
        # Like Debian's /usr/bin/chromium-headless-shell: a shell that does not exec.
        assert binary is not None
        wrapper = tmp_path / "chromium"
        wrapper.write_text(f'#!/bin/sh\n"{binary}" "$@"\n')
        wrapper.chmod(0o755)
        settings = settings.replace(chromium_path=str(wrapper))
    rig = await start_rig(rig_factory, settings)
    assert "spaword1" in await rig.render_text(site.url("/spa/1"))
    victim = rig.pool.browser_pid
    assert victim is not None
    # The browser itself, not a shell wrapping it (whichever Debian package is installed).
    assert Path(psutil.Process(victim).exe()).name.startswith("chromium")
    # A page waiting on the slow API when the browser dies.
    pending = asyncio.create_task(rig.render_text(site.url("/spa-slow/2")))
    await asyncio.sleep(0.3)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(BrowserCrashed):
        await pending
    assert "spaword3" in await rig.render_text(site.url("/spa/3"))
    assert rig.pool.restarts == {"crash": 1}
    assert rig.pool.browser_pid != victim


def playwright_drivers() -> set[int]:
    """Playwright's driver processes (node ... run-driver) below this process."""
    return set(children(is_playwright_driver))


async def test_the_pool_recovers_when_playwrights_driver_dies(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    before = playwright_drivers()
    rig = await start_rig(rig_factory, site_settings(site))
    assert "spaword1" in await rig.render_text(site.url("/spa/1"))
    (driver,) = playwright_drivers() - before
    browser = rig.pool.browser_pid
    assert browser is not None
    os.kill(driver, signal.SIGKILL)
    # Pages fail as transient errors (retried) until the pool has a new driver and browser.
    recovered = ""
    for n in range(2, 10):
        try:
            recovered = await rig.render_text(site.url(f"/spa/{n}"))
            break
        except TransientError:
            await asyncio.sleep(0.2)
    assert "spaword" in recovered
    assert rig.pool.browser_pid not in (None, browser)

    async def old_browser_gone() -> bool:
        return _zombie_or_gone(browser)

    await wait_for(old_browser_gone, timeout=10)


async def test_hung_browser_is_detected_and_replaced(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    rig = await start_rig(rig_factory, site_settings(site, render_timeout_s=2.0))
    assert "spaword1" in await rig.render_text(site.url("/spa/1"))
    victim = rig.pool.browser_pid
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)  # alive but answering nothing
    try:
        with pytest.raises(BrowserCrashed):
            await rig.render_text(site.url("/spa/2"))
    finally:
        # The pool SIGKILLs a hung browser; CONT in case the test failed before that.
        if psutil.pid_exists(victim):
            os.kill(victim, signal.SIGCONT)
    assert rig.pool.restarts == {"hang": 1}
    assert "spaword3" in await rig.render_text(site.url("/spa/3"))


async def test_the_disabled_features_keep_playwrights_own(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    # Chromium keeps only the last --disable-features switch: ours must carry every feature
    # Playwright's own switch disables (a Playwright upgrade that adds one fails here).
    rig = await start_rig(rig_factory, site_settings(site))
    session = rig.pool._session
    assert session is not None and session.process is not None
    switches = [
        set(arg.split("=", 1)[1].split(","))
        for arg in session.process.cmdline()
        if arg.startswith("--disable-features=")
    ]
    assert len(switches) >= 2  # Playwright's, then ours
    missing = set().union(*switches[:-1]) - switches[-1]
    assert not missing, f"add {sorted(missing)} to PLAYWRIGHT_DISABLED_FEATURES"
    assert {"BackForwardCache", "WebUIOmniboxPopup"} <= switches[-1]


async def test_browser_cannot_reach_a_non_allowed_port(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    """Scripts, images, fetch(), WebSocket and a redirect all aim at another loopback port
    (not in allow_hosts): the canary there must see nothing."""
    with LoopbackSite() as canary:
        rig = await start_rig(rig_factory, site_settings(site))
        # /static/* is a counted route: every probe that arrived would show in hits.
        direct = canary.url("/static")
        text = await rig.render_text(site.url(f"/probe?target={direct}"))
        assert "probe blocked" in text
        # Through a redirect on the allowed site: our code follows it and refuses the hop.
        via_redirect = site.url(f"/redirect?to={direct}")
        text = await rig.render_text(site.url(f"/probe?target={via_redirect}"))
        assert "probe blocked" in text
        # A name for the canary: the proxy resolves it, sees loopback, refuses.
        by_name = direct.replace("127.0.0.1", "localhost")
        text = await rig.render_text(site.url(f"/probe?target={by_name}"))
        assert "probe blocked" in text
        assert sum(canary.hits.values()) == 0, canary.hits
        assert site.hits["/redirect"] >= 1  # the redirect was requested, by the browser
        assert rig.proxy.refused >= 3  # ...and its next hop refused by the proxy


async def test_the_document_is_not_fetched_twice(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    rig = await start_rig(rig_factory, site_settings(site))
    assert "spaword5" in await rig.render_text(site.url("/spa/5"))
    assert site.hits["/spa/5"] == 1  # the worker's fetch; the browser got that copy
    assert rig.proxy.served == 1


async def test_without_the_proxy_the_browser_reaches_nothing() -> None:
    """The fence does not depend on the proxy answering: with the proxy's port closed,
    nothing bypasses it (not even loopback) and names do not resolve, so the canary on
    loopback sees no connection whether addressed by IP or by name."""
    need_browser()
    from playwright.async_api import Error as PlaywrightError  # noqa: PLC0415
    from playwright.async_api import async_playwright  # noqa: PLC0415

    with LoopbackSite() as canary:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        args = [
            *CHROMIUM_ARGS,
            *FENCE_ARGS,
            f"--proxy-server=http://127.0.0.1:{closed.getsockname()[1]}",
        ]
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=chromium_executable(Settings()), args=args
                )
                page = await browser.new_page()
                for url in (
                    canary.url("/static/x"),
                    canary.url("/static/x").replace("127.0.0.1", "localhost"),
                ):
                    with pytest.raises(PlaywrightError, match="ERR_PROXY_CONNECTION_FAILED"):
                        await page.goto(url)
                await browser.close()
        finally:
            closed.close()
        assert sum(canary.hits.values()) == 0, canary.hits


@pytest.mark.parametrize("block", [True, False], ids=["default", "off"])
async def test_images_are_not_loaded_unless_asked_for(
    site: LoopbackSite, rig_factory: list[Rig], block: bool
) -> None:
    assert Settings().render_block_media is True  # the default
    with LoopbackSite() as other:
        settings = site_settings(site, render_block_media=block).replace(
            allow_hosts=(site.hostport, other.hostport)
        )
        rig = await start_rig(rig_factory, settings)
        await rig.render_text(site.url(f"/probe?target={other.url('/static')}"))
        assert other.hits["/static/pixel.png"] == (0 if block else 1)
        assert other.hits["/static/evil.js"] == 1  # scripts still load


async def test_kill_9_browser_mid_run_loses_no_url(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    need_browser()
    settings = settings.replace(render="always", render_concurrency=4)
    urls = [site.url(f"/spa-slow/{n}") for n in range(30)]
    roles = Roles(settings)
    try:
        worker = roles.start("worker", "--concurrency", "8")
        roles.start("indexer")
        cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))

        async def some_indexed() -> bool:
            return len(indexed_urls(settings)) >= 5

        await wait_for(some_indexed, timeout=60)
        mains = browser_mains(worker.pid)
        assert len(mains) == 1
        victim = mains[0]
        victim.kill()
        await wait_indexed(settings, urls, timeout=120)
        assert (await get_status(settings))["dead_letters"] == 0
        # Recovered: a new browser serves the worker.
        now = browser_mains(worker.pid)
        assert len(now) == 1 and now[0].pid != victim.pid
    finally:
        roles.stop_all()
    pages = await result_pages(settings)
    assert all(
        pages[u].via == "browser" and f"slowword{u.rsplit('/', 1)[1]}" in pages[u].text
        for u in urls
    )


async def test_sigterm_leaves_no_browser_process_and_no_zombie(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    need_browser()
    settings = settings.replace(render="always", render_concurrency=2)
    urls = [site.url(f"/spa/{n}") for n in range(6)]
    roles = Roles(settings)
    try:
        worker = roles.start("worker", "--concurrency", "4")
        roles.start("indexer")
        cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
        await wait_indexed(settings, urls)
        tree = psutil.Process(worker.pid).children(recursive=True)
        assert browser_mains(worker.pid), "the worker runs a browser"
        assert len(tree) >= 3  # driver, browser, renderers...
        # The worker caps its Playwright driver's heap (FLEET_RENDER_DRIVER_HEAP_MB).
        (driver,) = (p for p in tree if is_playwright_driver(p.cmdline()))
        cap = f"--max-old-space-size={settings.render_driver_heap_mb}"
        assert cap in driver.environ().get("NODE_OPTIONS", "")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        roles.stop_all()

    def survivors() -> list[str]:
        left = []
        for proc in tree:
            try:
                if proc.is_running():
                    left.append(f"{proc.pid} {proc.status()} {proc.name()}")
            except psutil.NoSuchProcess:
                continue
        return left

    async def all_gone() -> bool:
        return not survivors()

    try:
        await wait_for(all_gone, timeout=10)
    except AssertionError:
        pytest.fail(f"left behind after SIGTERM: {survivors()}")


async def test_auto_mode_launches_lazily_and_a_broken_browser_turns_rendering_off(
    site: LoopbackSite, rig_factory: list[Rig]
) -> None:
    rig = Rig(site_settings(site, chromium_path="/bin/false"))
    rig_factory.append(rig)
    await rig.start(launch=False)  # found, not started: nothing to fail yet
    assert rig.pool.browser_pid is None
    for _ in range(2):  # the second page does not try again
        with pytest.raises(RenderUnavailable, match="FLEET_RENDER=never"):
            await rig.render_text(site.url("/spa/1"))
