"""One URL in, one ``Page`` out: fetch (guarded), render if the page needs it, extract.

Knows nothing of NATS: the worker role hands it a task and settles what it returns or raises.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from fleet.errors import RenderUnavailable, TransientError
from fleet.messages import Page, UrlTask
from fleet.scrape import extract as extraction
from fleet.scrape.fetch import FetchResult, redirect_target
from fleet.scrape.render.assess import assess
from fleet.scrape.render.policy import Plan, RenderPlanning
from fleet.scrape.render.pool import Rendering
from fleet.settings import Settings
from fleet.telemetry import Telemetry
from fleet.urls import url_id

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


class Fetching(Protocol):
    """The page fetch the scraper needs (``Fetcher``)."""

    async def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> FetchResult:
        """Fetch a page, HTML or text only; any failure raises a fleet error. ``headers`` are
        sent with it (conditional requests); ``follow_redirects=False`` returns a redirect."""
        ...


@dataclass(frozen=True, slots=True)
class NotModified:
    """A crawl's conditional request was answered 304: the stored page is current."""

    url: str


@dataclass(frozen=True, slots=True)
class Redirected:
    """A crawl URL redirects: the crawl queues ``target`` (once) instead of following."""

    url: str
    target: str
    status: int


def conditional_headers(task: UrlTask) -> dict[str, str]:
    """If-None-Match / If-Modified-Since from the validators a recrawl task carries."""
    headers: dict[str, str] = {}
    if task.etag:
        headers["If-None-Match"] = task.etag
    if task.last_modified:
        headers["If-Modified-Since"] = task.last_modified
    return headers


class Scraper:
    """Fetch, render if needed, extract one URL into a Page; knows nothing of NATS.

    ``renderer`` is None when rendering is off or unavailable; ``policy`` decides in auto
    mode which pages need the browser (and learns per domain).
    """

    def __init__(
        self,
        fetcher: Fetching,
        settings: Settings,
        *,
        telemetry: Telemetry | None = None,
        renderer: Rendering | None = None,
        policy: RenderPlanning | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._settings = settings
        self._telemetry = telemetry or Telemetry.disabled()
        self._renderer = renderer
        self._policy = policy

    async def scrape(self, task: UrlTask, attempt: int) -> Page:
        """Fetch ``task.url``, render it if the plan says so, and extract it into a ``Page``.
        Crawl tasks get conditional requests and redirects as results (``NotModified``,
        ``Redirected``) instead of a followed fetch.


        Fetch errors propagate, for the settler to retry or dead-letter. In auto mode a missing
        browser, or a render failing on the last attempt (``max_deliver``), gives the HTTP result
        instead; otherwise a failed render is raised for a retry. ``attempt`` is recorded.
        """
        started = time.perf_counter()
        with self._telemetry.fetching(task.url) as fetching:
            fetched = await self._fetcher.fetch(task.url)
            fetching.response(fetched.status)
        return await self._page(task, attempt, fetched, started)

    async def scrape_crawl(self, task: UrlTask, attempt: int) -> Page | NotModified | Redirected:
        """A crawl's fetch: conditional when the task has validators, and redirects are
        handed back (the crawl queues their targets once) instead of followed."""
        started = time.perf_counter()
        with self._telemetry.fetching(task.url) as fetching:
            fetched = await self._fetcher.fetch(
                task.url, headers=conditional_headers(task) or None, follow_redirects=False
            )
            fetching.response(fetched.status)
        if fetched.status == 304:
            return NotModified(task.url)
        location = fetched.headers.get("location")
        if 300 <= fetched.status < 400 and location:
            return Redirected(task.url, redirect_target(task.url, location), fetched.status)
        return await self._page(task, attempt, fetched, started)

    async def _page(
        self, task: UrlTask, attempt: int, fetched: FetchResult, started: float
    ) -> Page:
        fetch_ms = (time.perf_counter() - started) * 1000
        # `always` renders every HTML page and never falls back to the HTTP result (a failed
        # render is retried or dead-lettered), so extracting the fetched copy is wasted work.
        rendered_anyway = (
            self._settings.render == "always"
            and self._renderer is not None
            and fetched.content_type in HTML_TYPES
        )
        ex = None if rendered_anyway else self._extract_fetched(fetched)
        via: Literal["http", "browser"] = "http"
        plan = await self._plan(task.url, fetched, ex, attempt)
        if plan.render and self._renderer is None:
            # Auto without a browser: only pages that need rendering count as unavailable.
            plan = Plan(False, "borderline" if plan.sample else "render_unavailable")
        if plan.render and self._renderer is not None:
            render_started = time.perf_counter()
            try:
                with self._telemetry.stage("render"):
                    rendered = await self._renderer.render(task.url, fetched)
            except RenderUnavailable:
                if self._settings.render == "always":
                    raise
                await self._abandon(task.url, plan)
                plan = Plan(False, "render_unavailable")
            except TransientError:
                await self._abandon(task.url, plan)
                self._telemetry.rendered("browser", plan.reason, "error", None)
                if self._settings.render == "always" or attempt < self._settings.max_deliver:
                    raise
                # Last attempt in auto mode: the HTTP result beats a dead letter.
                plan = Plan(False, "render_failed")
            else:
                seconds = time.perf_counter() - render_started
                self._telemetry.rendered("browser", plan.reason, "ok", seconds)
                with self._telemetry.stage("extract"):
                    rendered_ex = self._extract(
                        rendered.html.encode(), fetched, "text/html", "utf-8"
                    )
                if plan.sample and self._policy is not None and ex is not None:
                    await self._policy.record(task.url, plan, len(ex.text), len(rendered_ex.text))
                ex, via = rendered_ex, "browser"
        if via == "http":
            self._telemetry.rendered("http", plan.reason, "ok", None)
        if ex is None:  # not reached in `always` (a failed render raises), kept for safety
            ex = self._extract_fetched(fetched)
        return Page(
            id=url_id(ex.canonical_url),
            url=task.url,
            final_url=fetched.final_url,
            canonical_url=ex.canonical_url,
            status=fetched.status,
            content_type=fetched.content_type,
            title=ex.title,
            description=ex.description,
            headings=list(ex.headings),
            text=ex.text,
            lang=ex.lang,
            links=list(ex.links),
            content_hash=ex.content_hash,
            fetched_at=time.time(),
            fetch_ms=round(fetch_ms, 1),
            via=via,
            via_reason=plan.reason,
            attempt=attempt,
            etag=fetched.headers.get("etag", ""),
            last_modified=fetched.headers.get("last-modified", ""),
            nofollow=ex.nofollow,
            crawl=task.crawl,
            depth=task.depth,
        )

    async def _abandon(self, url: str, plan: Plan) -> None:
        if plan.sample and self._policy is not None:
            await self._policy.abandon(url, plan)  # its sample slot goes to another page

    def _extract_fetched(self, fetched: FetchResult) -> extraction.Extracted:
        with self._telemetry.stage("extract"):
            return self._extract(fetched.body, fetched, fetched.content_type, fetched.charset)

    def _extract(
        self, body: bytes, fetched: FetchResult, content_type: str, charset: str | None
    ) -> extraction.Extracted:
        return extraction.extract(
            body,
            final_url=fetched.final_url,
            content_type=content_type,
            charset=charset,
            max_links=self._settings.max_links,
        )

    async def _plan(
        self, url: str, fetched: FetchResult, ex: extraction.Extracted | None, attempt: int
    ) -> Plan:
        mode = self._settings.render
        if mode == "never":
            return Plan(False, "render_never")
        if fetched.content_type not in HTML_TYPES:
            return Plan(False, "not_html")
        if mode == "always":
            return Plan(True, "render_always")
        assert ex is not None  # extracted whenever the mode is not `always`
        assessment = assess(fetched.body, ex.text)
        if self._policy is None or self._renderer is None:
            # No browser here: nothing to learn with, and no page should wait for it.
            return Plan(assessment.verdict == "render", assessment.reason)
        # A first delivery may be deferred while its domain is learned (the redelivery
        # waits instead, and leaves retries for real failures).
        may_defer = attempt == 1 and self._settings.max_deliver > 2
        return await self._policy.plan(url, assessment, may_defer=may_defer)
