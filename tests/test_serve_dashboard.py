"""The dashboard in real headless Chromium (Playwright): it loads without console errors,
shows the lag numbers and watches them change while real workers process URLs, searches,
and asks for the key before a replay. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.scrape.render.chromium import chromium_executable
from fleet.settings import Settings
from tests.conftest import Roles, need
from tests.pipeline_helpers import put_dead_letter, running_serve
from tests.site import CrawlSite, LoopbackSite

API_KEY = "dashboard-admin-key"
READ_KEY = "dashboard-read-key"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    need("playwright", importlib.util.find_spec("playwright") is not None)
    binary = chromium_executable(Settings())
    need("Chromium (Debian's chromium-headless-shell)", binary is not None)
    from playwright.async_api import async_playwright  # noqa: PLC0415

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=binary)
        try:
            yield launched
        finally:
            await launched.close()


class Console:
    """Errors the page reported: console.error lines and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


async def test_dashboard_shows_live_lag_search_and_replay(
    settings: Settings, site: LoopbackSite, roles: Roles, browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect  # noqa: PLC0415

    async with running_serve(settings) as base, aiohttp.ClientSession() as http:
        page = await browser.new_page(viewport={"width": 1366, "height": 900})
        console = Console(page)
        await page.goto(base + "/")
        pending = page.locator("#lag-workers-pending")
        await expect(pending).to_have_text("0", timeout=TIMEOUT_MS)
        await expect(page.locator("#health")).to_have_text("health: degraded", timeout=TIMEOUT_MS)

        # URLs queue up while no worker runs: the numbers follow.
        urls = [site.url(f"/page/{n}") for n in range(40)] + [site.url("/status/404")]
        async with http.post(f"{base}/api/urls", json=urls) as resp:
            assert resp.status == 200
        await expect(pending).to_have_text("41", timeout=TIMEOUT_MS)
        await page.screenshot(path=str(tmp_path / "dashboard-queued.png"), full_page=True)

        roles.start("worker")
        roles.start("indexer")
        await expect(pending).to_have_text("0", timeout=TIMEOUT_MS)
        await expect(page.locator("#lag-workers-ack_pending")).to_have_text("0", timeout=TIMEOUT_MS)
        await expect(page.locator("#lag-indexer-pending")).to_have_text("0", timeout=TIMEOUT_MS)
        await expect(page.locator("#dlq tbody")).to_contain_text("http_404", timeout=TIMEOUT_MS)
        await expect(page.locator("#dlq-count")).to_have_text("1 held")
        # The chart has drawn the pages/s samples, including the burst.
        points = await page.locator("#chart-line").get_attribute("points")
        assert points and len(points.split()) >= 2
        assert await page.locator("#chart-max").text_content() != "1.0 pages/s"

        await page.fill("#search-q", "unique7")
        await page.press("#search-q", "Enter")
        await expect(page.locator("#search-hits li")).to_have_count(1, timeout=TIMEOUT_MS)
        await expect(page.locator("#search-hits li").first).to_contain_text("Page 7")
        await expect(page.locator("#search-total")).to_have_text("1 match")

        # No key on this server: replay asks to confirm, without a key field.
        await page.click("#replay")
        await expect(page.locator("#key-dialog")).to_be_visible()
        await expect(page.locator("#key-input")).to_be_hidden()
        await page.click("#key-ok")
        await expect(page.locator("#replay-result")).to_have_text("replayed 1")
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert console.errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


async def test_dashboard_shows_crawls_with_progress_bars(
    crawl_settings: Settings, crawl_site: CrawlSite, browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect  # noqa: PLC0415

    crawl_site.delay_s = 0.2  # a crawl of a few seconds: the bar is seen part way
    roles = Roles(crawl_settings)
    try:
        async with running_serve(crawl_settings) as base, aiohttp.ClientSession() as http:
            body = {"seeds": [crawl_site.url("/docs/index.html")], "name": "docs"}
            async with http.post(f"{base}/api/crawls", json=body) as resp:
                assert resp.status == 201
                crawl = (await resp.json())["crawl"]
            page = await browser.new_page(viewport={"width": 1366, "height": 900})
            console = Console(page)
            await page.goto(base + "/")
            row = page.locator(f'#crawls tr[data-crawl="{crawl}"]')
            await expect(row).to_contain_text(f"docs ({crawl})", timeout=TIMEOUT_MS)
            await expect(row.locator("td.state-running")).to_have_text("running")
            await expect(row.locator(".bar em")).to_have_text("0 %")
            await expect(row.locator(".crawl-queued")).to_have_text("1")

            roles.start("indexer")
            roles.start("worker")
            fetched = row.locator(".crawl-fetched")
            await expect(fetched).not_to_have_text("0", timeout=TIMEOUT_MS)
            # Part way: the bar is neither empty nor full while the crawl runs.
            between = re.compile(r"^[1-9][0-9]? %$")
            await expect(row.locator(".bar em")).to_have_text(between, timeout=TIMEOUT_MS)
            await page.screenshot(path=str(tmp_path / "dashboard-crawling.png"), full_page=True)
            await expect(row.locator("td.state-done")).to_have_text("done", timeout=120_000)
            await expect(row.locator(".bar em")).to_have_text("100 %")
            await expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "100")
            pages = len(crawl_site.pages_of(crawl_site.reachable()))
            await expect(fetched).to_have_text(str(pages))
            await expect(row.locator(".crawl-queued")).to_have_text("0")
            await page.screenshot(path=str(tmp_path / "dashboard-crawled.png"), full_page=True)
            assert console.errors == []
    finally:
        roles.stop_all()
    assert (tmp_path / "dashboard-crawled.png").stat().st_size > 10_000


@pytest.fixture
async def supervisor_url() -> AsyncIterator[str]:
    """A stand-in for the supervisor's /health and /workers (their exact shapes)."""
    from aiohttp import web  # noqa: PLC0415

    async def health(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "backend": "docker",
                "last_decision": {
                    "lag": 420,
                    "current": 2,
                    "wanted": 3,
                    "desired": 3,
                    "reason": "lag 420 > 2 x target 200",
                    "direction": "up",
                },
                "policy": {"min_replicas": 1, "max_replicas": 8, "target_lag": 200},
            }
        )

    async def workers(_: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "id": "a1",
                    "name": "fleet-worker-1",
                    "state": "running",
                    "cpu_percent": 41.5,
                    "memory_bytes": 83_886_080,
                    "memory_limit_bytes": None,
                },
                {
                    "id": "b2",
                    "name": "fleet-worker-2",
                    "state": "running",
                    "cpu_percent": 12.0,
                    "memory_bytes": 73_400_320,
                    "memory_limit_bytes": None,
                },
            ]
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/workers", workers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_dashboard_with_keys_asks_for_them(
    settings: Settings, browser: Any, tmp_path: Path, supervisor_url: str
) -> None:
    from playwright.async_api import expect  # noqa: PLC0415

    keyed = settings.replace(api_key=API_KEY, api_read_key=READ_KEY, supervisor_url=supervisor_url)
    async with running_serve(keyed) as base:
        # A visitor without a key is told what to do, and sees nothing else.
        stranger = await browser.new_page()
        await stranger.goto(base + "/")
        await expect(stranger.locator("#banner")).to_contain_text("API key", timeout=TIMEOUT_MS)
        await expect(stranger.locator("#key-button")).to_be_visible()
        await expect(stranger.locator("#lag-workers-pending")).to_have_text("\u2013")  # no data

        await put_dead_letter(keyed, "https://example.com/busy", "http_503")
        # A viewer with the read-only key sees everything; replay asks for the full key.
        viewer = await browser.new_page(viewport={"width": 1366, "height": 900})
        uncaught: list[str] = []
        viewer.on("pageerror", lambda e: uncaught.append(str(e)))
        await viewer.add_init_script(f"sessionStorage.setItem('fleet-api-key', '{READ_KEY}')")
        await viewer.goto(base + "/")
        await expect(viewer.locator("#lag-workers-pending")).to_have_text("0", timeout=TIMEOUT_MS)
        await expect(viewer.locator("#dlq tbody")).to_contain_text("http_503", timeout=TIMEOUT_MS)
        # The supervisor's view: workers running, its target and each worker.
        workers = viewer.locator("#supervisor")
        await expect(workers).to_contain_text("workers running2", timeout=TIMEOUT_MS)
        await expect(workers).to_contain_text("target3")
        await expect(workers).to_contain_text("fleet-worker-2")
        await expect(workers).to_contain_text("42 %")
        await viewer.click("#replay")
        await expect(viewer.locator("#key-dialog")).to_be_visible()
        await expect(viewer.locator("#key-input")).to_be_visible()
        await expect(viewer.locator("#key-text")).to_contain_text("FLEET_API_KEY")
        await viewer.fill("#key-input", READ_KEY)  # the read-only key is not enough
        await viewer.click("#key-ok")
        await expect(viewer.locator("#key-error")).to_contain_text("read-only", timeout=TIMEOUT_MS)
        await viewer.screenshot(path=str(tmp_path / "dashboard-replay-key.png"))
        await viewer.fill("#key-input", API_KEY)
        await viewer.click("#key-ok")
        await expect(viewer.locator("#replay-result")).to_have_text("replayed 1")
        await expect(viewer.locator("#dlq-count")).to_have_text("0 held", timeout=TIMEOUT_MS)
        await expect(viewer.locator("#lag-workers-pending")).to_have_text("1", timeout=TIMEOUT_MS)
        assert uncaught == []
