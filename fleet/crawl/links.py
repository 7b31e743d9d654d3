"""Frontier admission: the URLs a crawl's seeds, pages and sitemaps lead to.

Each URL is judged by the scope and the crawl's limits, claimed in the crawl's seen-set
(only the first claim queues it, fleet-wide), counted once, then queued, or held for its
layer in a depth-limited crawl.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit

from fleet.crawl.counts import DEPTH, MAX_PAGES
from fleet.messages import CrawlEvent, CrawlSpec, Skipped, UrlTask
from fleet.nats.frontier import LINK, QUEUED, SITEMAP_QUEUED, Candidate, Event, Frontier
from fleet.scrape.scope import CrawlScope
from fleet.urls import url_id


def layered(spec: CrawlSpec) -> bool:
    """Depth-limited crawls proceed layer by layer (exact depths)."""
    return spec.max_depth is not None


def _sitemap_uid(url: str) -> str:
    # Sitemaps share the seen-set with pages under another key: one read per sitemap.
    return url_id("sitemap:" + url)


class CrawlLinks:
    """Claims, counts and queues the URLs one crawl discovers (links, seeds, sitemaps)."""

    def __init__(self, frontier: Frontier, spec: CrawlSpec) -> None:
        self._f = frontier
        self._spec = spec
        self._scope = CrawlScope.build(spec.seeds, spec.scope, spec.include, spec.exclude)

    @property
    def spec(self) -> CrawlSpec:
        """The spec this was built from (CrawlWork builds a new one when the state changes)."""
        return self._spec

    def verdict(self, url: str, depth: int) -> str:
        """ "" to follow ``url`` at ``depth``, else why not: the scope's reason, or ``depth``."""
        verdict = self._scope.verdict(url)
        if not verdict and self._spec.max_depth is not None and depth > self._spec.max_depth:
            return DEPTH
        return verdict

    async def add_roots(self, seeds: Sequence[str], revisit: Sequence[UrlTask]) -> None:
        """Seeds at depth 0 (no filters: the user named them), and a recrawl's pages."""
        by_url = {t.url: t for t in revisit}
        cands = [Candidate(u, url_id(u), 0) for u in seeds if u not in by_url]
        cands += [Candidate(t.url, t.id, t.depth) for t in revisit]
        if not layered(self._spec):
            await self._claim_and_queue("seed", cands, recheck=False, hold=False, validators=by_url)
            return
        # Layer by layer: depth 0 goes now (after the sitemaps, if any), the rest is held.
        now = [c for c in cands if c.depth == 0]
        later = [c for c in cands if c.depth > 0]
        hold_now = self._spec.sitemaps
        await self._claim_and_queue("seed", now, recheck=False, hold=hold_now, validators=by_url)
        await self._claim_and_queue("seed", later, recheck=False, hold=True, validators=by_url)

    async def discover(
        self, parent: UrlTask, urls: Sequence[str], depth: int, *, recheck: bool
    ) -> None:
        """Links (``depth`` = parent's + 1) or a redirect's target (same depth)."""
        cands = [Candidate(u, url_id(u), depth, self.verdict(u, depth)) for u in urls]
        hold = layered(self._spec) and depth > parent.depth
        await self._claim_and_queue(parent.id, cands, recheck=recheck, hold=hold)

    async def discover_listed(
        self, sitemap: UrlTask, urls: Sequence[str], *, recheck: bool
    ) -> None:
        """Pages a sitemap lists: depth 0, in scope and through the filters only."""
        cands = [Candidate(u, url_id(u), 0, self.verdict(u, 0)) for u in urls]
        await self._claim_and_queue(sitemap.id, cands, recheck=recheck, hold=layered(self._spec))

    async def _claim_and_queue(
        self,
        owner: str,
        cands: Sequence[Candidate],
        *,
        recheck: bool,
        hold: bool,
        validators: dict[str, UrlTask] | None = None,
    ) -> None:
        crawl = self._spec.id
        mine = await self._f.claim(crawl, owner, cands, recheck=recheck)
        new = [c for c, m in zip(cands, mine, strict=True) if m]
        if not new:
            return
        follow = [c for c in new if not c.verdict]
        over: set[str] = set()
        if self._spec.max_pages is not None and follow:
            room = await self._f.within_cap(crawl, [c.uid for c in follow])
            over = {c.uid for c, ok in zip(follow, room, strict=True) if not ok}
            follow = [c for c in follow if c.uid not in over]
        events = [
            Event(QUEUED, c.uid, c.depth, CrawlEvent(url=c.url, depth=c.depth)) for c in follow
        ]
        skipped = [c for c in new if c.verdict or c.uid in over]
        for c in skipped:
            reason = c.verdict or MAX_PAGES
            events.append(Event(LINK, c.uid, c.depth, CrawlEvent(url=c.url, depth=c.depth), reason))
        await self._f.record(crawl, events)
        if skipped:
            now = time.time()
            await self._f.skipped(
                [
                    Skipped(
                        url=c.url,
                        id=c.uid,
                        reason=c.verdict or MAX_PAGES,
                        skipped_at=now,
                        source=self._spec.name or None,
                        crawl=crawl,
                    )
                    for c in skipped
                ]
            )
        tasks = [self._task(c, (validators or {}).get(c.url)) for c in follow]
        await self._queue(tasks, hold=hold)
        self._f.remember(crawl, [c.uid for c in new])

    def _task(self, c: Candidate, earlier: UrlTask | None) -> UrlTask:
        return UrlTask(
            url=c.url,
            id=c.uid,
            published_at=time.time(),
            source=self._spec.name or None,
            crawl=self._spec.id,
            depth=c.depth,
            etag=earlier.etag if earlier else "",
            last_modified=earlier.last_modified if earlier else "",
            content_hash=earlier.content_hash if earlier else "",
        )

    async def _queue(self, tasks: Sequence[UrlTask], *, hold: bool) -> None:
        if not tasks:
            return
        if not hold:
            await self._f.enqueue(tasks)
            return
        by_depth: dict[int, list[UrlTask]] = {}
        for t in tasks:
            by_depth.setdefault(t.depth, []).append(t)
        for depth, group in by_depth.items():
            await self._f.hold(self._spec.id, depth, group)

    async def add_sitemaps(self, seeds: Sequence[str]) -> None:
        """Read robots.txt (its Sitemap: lines) and /sitemap.xml of every seed's origin."""
        origins = dict.fromkeys(f"{urlsplit(s).scheme}://{urlsplit(s).netloc}" for s in seeds)
        tasks: list[UrlTask] = []
        for origin in origins:
            tasks.append(self._sitemap_task(f"{origin}/robots.txt", "robots"))
            tasks.append(self._sitemap_task(f"{origin}/sitemap.xml", "sitemap"))
        await self.queue_sitemaps("seed", tasks, recheck=False)

    def _sitemap_task(self, url: str, kind: Literal["sitemap", "robots"]) -> UrlTask:
        return UrlTask(
            url=url,
            id=_sitemap_uid(url),
            published_at=time.time(),
            source=self._spec.name or None,
            crawl=self._spec.id,
            kind=kind,
        )

    def sitemap_tasks(self, urls: Sequence[str]) -> list[UrlTask]:
        """Tasks for sitemap files on the seeds' hosts (others are not read)."""
        hosts = {urlsplit(s).netloc for s in self._spec.seeds}
        return [self._sitemap_task(u, "sitemap") for u in urls if urlsplit(u).netloc in hosts]

    async def queue_sitemaps(self, owner: str, tasks: Sequence[UrlTask], *, recheck: bool) -> None:
        """Claim sitemap reads for ``owner``, count and queue those it won; never held, since
        layer 0 is released only once every sitemap is read."""
        cands = [Candidate(t.url, t.id, 0) for t in tasks]
        mine = await self._f.claim(self._spec.id, owner, cands, recheck=recheck)
        new = [t for t, m in zip(tasks, mine, strict=True) if m]
        await self._f.record(
            self._spec.id,
            [Event(SITEMAP_QUEUED, t.id, 0, CrawlEvent(url=t.url)) for t in new],
        )
        if new:
            await self._f.enqueue(new)
        self._f.remember(self._spec.id, [t.id for t in new])
