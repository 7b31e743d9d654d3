"""The worker side of a crawl: fetch a crawl task, follow what it leads to, count it.

A page's links (or a redirect's target) and a sitemap's pages go to ``CrawlLinks``; the
page's own outcome is counted last, so the worker acks only after its children are queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from fleet.crawl.links import CrawlLinks
from fleet.errors import PermanentError
from fleet.messages import CrawlEvent, Page, Skipped, UrlTask
from fleet.nats.frontier import (
    FETCHED,
    REDIRECTED,
    SITEMAP_DONE,
    SKIPPED,
    UNCHANGED,
    Event,
    Frontier,
)
from fleet.scrape.fetch import GuardedRequesting
from fleet.scrape.scraper import NotModified, Redirected, Scraper
from fleet.scrape.sitemaps import SITEMAP_CONTENT_TYPES, parse_sitemap, robots_sitemaps

# Why a task of a cancelled (or deleted) crawl is skipped, not fetched.
CANCELLED: Final = "cancelled"


class CrawlWork:
    """A worker's handling of crawl tasks (the Worker acks after ``handle`` returns).

    ``fetcher`` reads sitemaps (``Fetcher.request``: the guarded path); the worker calls
    ``dead_lettered`` for a crawl task it dead-letters, before the term.
    """

    def __init__(self, frontier: Frontier, scraper: Scraper, fetcher: GuardedRequesting) -> None:
        self._f = frontier
        self._scraper = scraper
        self._fetcher = fetcher
        self._links: dict[str, CrawlLinks] = {}
        self.pages = 0

    async def _crawl(self, task: UrlTask) -> CrawlLinks | None:
        assert task.crawl is not None
        spec = await self._f.spec(task.crawl)
        if spec is None:
            return None
        links = self._links.get(spec.id)
        if links is None or links.spec.state != spec.state:
            links = self._links[spec.id] = CrawlLinks(self._f, spec)
            if len(self._links) > 1000:
                self._links.pop(next(iter(self._links)))
        return links

    async def handle(
        self,
        task: UrlTask,
        *,
        attempt: int,
        redelivered: bool,
        publish: Callable[[Page], Awaitable[None]],
    ) -> Page | None:
        """Process one crawl task; returns the page published, if any."""
        links = await self._crawl(task)
        if links is None or links.spec.state == "cancelled":
            await self.skip(task, CANCELLED, "crawl cancelled" if links else "crawl deleted")
            return None
        if task.kind != "page":
            await self._read_sitemap(links, task, redelivered)
            return None
        outcome = await self._scraper.scrape_crawl(task, attempt)
        if isinstance(outcome, NotModified):
            await self._count(task, UNCHANGED, self._validators(task))
            return None
        if isinstance(outcome, Redirected):
            await links.discover(task, [outcome.target], task.depth, recheck=redelivered)
            await self._count(task, REDIRECTED, CrawlEvent(url=task.url, detail=outcome.target))
            return None
        page = outcome
        if not page.nofollow and page.links:
            await links.discover(task, page.links, task.depth + 1, recheck=redelivered)
        body = CrawlEvent(
            url=task.url,
            depth=task.depth,
            etag=page.etag,
            last_modified=page.last_modified,
            content_hash=page.content_hash,
        )
        if task.content_hash and page.content_hash == task.content_hash:
            await self._count(task, UNCHANGED, body)
            return None
        await publish(page)
        await self._count(task, FETCHED, body)
        self.pages += 1
        return page

    @staticmethod
    def _validators(task: UrlTask) -> CrawlEvent:
        return CrawlEvent(
            url=task.url,
            depth=task.depth,
            etag=task.etag,
            last_modified=task.last_modified,
            content_hash=task.content_hash,
        )

    async def _count(self, task: UrlTask, kind: str, body: CrawlEvent, reason: str = "") -> None:
        assert task.crawl is not None
        await self._f.record(task.crawl, [Event(kind, task.id, task.depth, body, reason)])

    async def skip(self, task: UrlTask, reason: str, detail: str) -> None:
        """Count a crawl task not fetched on purpose (``cancelled``; ``robots`` from the
        politeness gate) and record it in the skipped stream; the caller then acks it."""
        assert task.crawl is not None
        if task.kind != "page":
            await self._count(task, SITEMAP_DONE, CrawlEvent(url=task.url, detail=detail))
            return
        await self._count(task, SKIPPED, CrawlEvent(url=task.url, depth=task.depth), reason)
        await self._f.skipped(
            [
                Skipped(
                    url=task.url,
                    id=task.id,
                    reason=reason,
                    detail=detail,
                    skipped_at=time.time(),
                    source=task.source,
                    crawl=task.crawl,
                )
            ]
        )

    async def dead_lettered(self, task: UrlTask) -> None:
        """Count a crawl task the worker dead-letters (called before its term)."""
        await self._f.count_dead_letter(task)

    async def _read_sitemap(self, links: CrawlLinks, task: UrlTask, redelivered: bool) -> None:
        """robots.txt (its Sitemap: lines) or one sitemap file; a missing one is no error."""
        detail = "read"
        try:
            fetched = await self._fetcher.request(
                task.url,
                accept=SITEMAP_CONTENT_TYPES if task.kind == "sitemap" else None,
                http_errors="raise",
            )
        except PermanentError as exc:
            detail = exc.reason  # e.g. http_404: no robots.txt / sitemap.xml, nothing to read
            fetched = None
        if fetched is not None:
            if task.kind == "robots":
                text = fetched.body.decode("utf-8", errors="replace")
                found = links.sitemap_tasks(robots_sitemaps(text))
                await links.queue_sitemaps(task.id, found, recheck=redelivered)
            else:
                content = await asyncio.to_thread(parse_sitemap, fetched.body, fetched.charset)
                await links.discover_listed(task, content.pages, recheck=redelivered)
                children = links.sitemap_tasks(content.sitemaps)
                await links.queue_sitemaps(task.id, children, recheck=redelivered)
        await self._count(task, SITEMAP_DONE, CrawlEvent(url=task.url, detail=detail))
