"""Crawls: start, watch and cancel crawl jobs, and what a worker does with a crawl's URL.

A crawl is a set of seeds and follow rules (``CrawlSpec``, KV bucket). Its URLs travel as
ordinary ``UrlTask`` messages (with ``crawl`` and ``depth``) through the same URLs stream
and workers as published URLs, so politeness, retries and dead letters apply unchanged.
What a worker adds for a crawl task, before it acks it:

1. links of the page (``<a>``/``<area>`` after ``<base>``, no ``rel=nofollow``, none at all
   under ``<meta name=robots content=nofollow>``) are judged by the scope (pure,
   ``fleet.scrape.scope``), then claimed in the crawl's seen-set (``fleet.nats.frontier``):
   only the first claim of a URL, fleet-wide and for the crawl's life, queues it;
2. every claimed URL is counted once (queued, or skipped with its reason);
3. the page's own outcome is counted (fetched, unchanged, redirected, dead...).

Children are claimed and queued before the parent is counted and acked, so "every queued
URL has an outcome" means the crawl is done. A redelivered task re-claims with ``recheck``:
URLs its earlier attempt claimed are its own and are queued again (dedup ids make that
idempotent), so a worker killed at any point loses nothing and counts nothing twice.

Depth-limited crawls go layer by layer: URLs at depth d+1 are held until every URL at
depth <= d has its outcome, so a URL's depth is its shortest click distance from the seeds
and ``--max-depth`` is exact. Without a depth limit nothing is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from fleet.errors import ConfigError, InvalidUrl, PermanentError
from fleet.messages import (
    CrawlEvent,
    CrawlScopeName,
    CrawlSpec,
    Page,
    Skipped,
    UrlTask,
    crawl_event_decoder,
)
from fleet.nats.frontier import (
    DEAD,
    FETCHED,
    HOLD,
    INDEX_FAILED,
    INDEXED,
    LINK,
    QUEUED,
    REDIRECTED,
    RELEASED,
    SITEMAP_DONE,
    SITEMAP_QUEUED,
    SKIPPED,
    TERMINAL,
    UNCHANGED,
    Candidate,
    Event,
    Frontier,
)
from fleet.scrape.fetch import GuardedRequesting
from fleet.scrape.scope import CrawlScope
from fleet.scrape.scraper import NotModified, Redirected, Scraper
from fleet.scrape.sitemaps import SITEMAP_CONTENT_TYPES, parse_sitemap, robots_sitemaps
from fleet.urls import normalize_url, url_id

log = logging.getLogger(__name__)

CANCELLED: Final = "cancelled"
DEPTH: Final = "depth"
MAX_PAGES: Final = "max_pages"
# Link verdicts that are still in scope (counted as discovered).
_IN_SCOPE_SKIPS: Final = frozenset({DEPTH, MAX_PAGES})
COORDINATOR_TICK_S: Final = 0.5
SPEC_LIST_EVERY_S: Final = 2.0


class CrawlNotFound(ConfigError):
    """No crawl with that id (or name) on this NATS server; `fleet crawl list` shows them."""

    reason = "crawl_not_found"


@dataclasses.dataclass(frozen=True)
class CrawlOptions:
    """What `fleet crawl start` / `fleet run --crawl` were asked for."""

    seeds: Sequence[str]
    scope: str | None = None  # None: prefix (or, on a recrawl, the earlier crawl's)
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_depth: int | None = None
    max_pages: int | None = None
    sitemaps: bool = False
    name: str = ""
    recrawl: str | None = None  # id or name of an earlier crawl to revisit

    def over(self, earlier: CrawlSpec | None) -> CrawlOptions:
        """These options, with what was not given taken from the crawl being revisited."""
        if earlier is None:
            return dataclasses.replace(self, scope=self.scope or "prefix")
        return dataclasses.replace(
            self,
            seeds=self.seeds or earlier.seeds,
            scope=self.scope or earlier.scope,
            include=self.include or earlier.include,
            exclude=self.exclude or earlier.exclude,
            max_depth=self.max_depth if self.max_depth is not None else earlier.max_depth,
            max_pages=self.max_pages if self.max_pages is not None else earlier.max_pages,
            sitemaps=self.sitemaps or earlier.sitemaps,
            name=self.name or earlier.name,
        )


def layered(spec: CrawlSpec) -> bool:
    """Depth-limited crawls proceed layer by layer (exact depths)."""
    return spec.max_depth is not None


def _new_id() -> str:
    return "c" + secrets.token_hex(5)


def _sitemap_uid(url: str) -> str:
    # Sitemaps share the seen-set with pages under another key: one read per sitemap.
    return url_id("sitemap:" + url)


# --------------------------------------------------------------------------- counters


@dataclasses.dataclass
class CrawlCounts:
    """A crawl's counters, read from its event messages (exact once the crawl is done)."""

    raw: dict[str, dict[int, int]]

    def total(self, kind: str) -> int:
        """Events of ``kind`` (bare kind only, not ``kind.reason``), all depths summed."""
        return sum(self.raw.get(kind, {}).values())

    def below(self, kinds: frozenset[str], depth: int) -> int:
        """Events of ``kinds`` (or ``kind.reason``) at depths under ``depth``."""
        return sum(
            n
            for key, by_depth in self.raw.items()
            if key.split(".", 1)[0] in kinds
            for d, n in by_depth.items()
            if d < depth
        )

    def reasons(self, kind: str) -> dict[str, int]:
        """Events of ``kind.<reason>`` by reason, all depths summed (the bare kind excluded)."""
        out: dict[str, int] = {}
        for key, by_depth in self.raw.items():
            head, _, reason = key.partition(".")
            if head == kind and reason:
                out[reason] = out.get(reason, 0) + sum(by_depth.values())
        return out

    @property
    def queued_total(self) -> int:
        """URLs ever queued (held ones included), each once: done or not."""
        return self.total(QUEUED)

    @property
    def outstanding(self) -> int:
        """Queued URLs without an outcome yet (held, waiting or in flight)."""
        done = sum(self.total(k) for k in (FETCHED, UNCHANGED, REDIRECTED, DEAD))
        return self.queued_total - done - sum(self.reasons(SKIPPED).values())

    @property
    def sitemaps_pending(self) -> int:
        """Sitemap and robots.txt reads queued but not done (layer 0 waits for them)."""
        return self.total(SITEMAP_QUEUED) - self.total(SITEMAP_DONE)

    @property
    def index_pending(self) -> int:
        """Fetched pages the indexer has neither indexed nor failed yet."""
        return self.total(FETCHED) - self.total(INDEXED) - self.total(INDEX_FAILED)

    @property
    def settled(self) -> bool:
        """Nothing left: every URL has its outcome and every page is indexed (or failed)."""
        return not (self.outstanding or self.sitemaps_pending or self.index_pending)

    @property
    def skipped(self) -> dict[str, int]:
        """URLs not fetched, by reason: links not followed plus queued tasks skipped."""
        out = self.reasons(LINK)
        for reason, n in self.reasons(SKIPPED).items():
            out[reason] = out.get(reason, 0) + n
        return dict(sorted(out.items()))

    @property
    def discovered(self) -> int:
        """Distinct in-scope URLs found: queued, or over the depth or page limit."""
        links = self.reasons(LINK)
        return self.queued_total + sum(links.get(r, 0) for r in _IN_SCOPE_SKIPS)


def crawl_state(spec: CrawlSpec, counts: CrawlCounts) -> Literal["running", "done", "cancelled"]:
    """cancelled once asked to stop; done when settled; running otherwise."""
    if spec.state == "cancelled":
        return "cancelled"
    return "done" if counts.settled and counts.queued_total else "running"


def status_view(spec: CrawlSpec, counts: CrawlCounts) -> dict[str, Any]:
    """The `fleet crawl status --json` object."""
    released = counts.raw.get(RELEASED, {})
    return {
        "crawl": spec.id,
        "name": spec.name,
        "state": crawl_state(spec, counts),
        "settled": counts.settled,
        "seeds": list(spec.seeds),
        "scope": spec.scope,
        "max_depth": spec.max_depth,
        "max_pages": spec.max_pages,
        "discovered": counts.discovered,
        "queued": counts.outstanding,
        "fetched": counts.total(FETCHED),
        "unchanged": counts.total(UNCHANGED),
        "redirected": counts.total(REDIRECTED),
        "indexed": counts.total(INDEXED),
        "dead_lettered": counts.total(DEAD) + counts.total(INDEX_FAILED),
        "skipped": counts.skipped,
        "sitemaps_read": counts.total(SITEMAP_DONE),
        "layer": max(released) if released else 0,
        "created_at": spec.created_at,
        "recrawl_of": spec.recrawl_of,
    }


def started_view(spec: CrawlSpec) -> dict[str, Any]:
    """The `fleet crawl start --json` object (also ``POST /api/crawls``)."""
    return {
        "crawl": spec.id,
        "name": spec.name,
        "seeds": list(spec.seeds),
        "scope": spec.scope,
        "recrawl_of": spec.recrawl_of,
    }


def cancelled_view(spec: CrawlSpec) -> dict[str, Any]:
    """The `fleet crawl cancel --json` object (also ``DELETE /api/crawls/{id}``)."""
    return {"crawl": spec.id, "state": spec.state}


async def read_counts(frontier: Frontier, crawl: str) -> CrawlCounts:
    """The crawl's counters as they stand now (one ``stream_info`` call)."""
    return CrawlCounts(await frontier.counts(crawl))


# --------------------------------------------------------------------------- the jobs


async def find_crawl(frontier: Frontier, key: str) -> CrawlSpec:
    """A crawl by id, else the newest with that name; CrawlNotFound otherwise."""
    spec = await frontier.spec(key, fresh=True) if key.isalnum() else None
    if spec is not None:
        return spec
    named = [s for s in await frontier.specs() if s.name == key]
    if not named:
        raise CrawlNotFound(f"no crawl {key!r}; `fleet crawl list` shows the crawls")
    return named[-1]


def _seed_urls(seeds: Sequence[str]) -> list[str]:
    out: dict[str, None] = {}
    for raw in seeds:
        try:
            out[normalize_url(raw)] = None
        except InvalidUrl as exc:
            raise ConfigError(f"seed {raw!r}: {exc}") from None
    if not out:
        raise ConfigError("a crawl needs at least one seed URL")
    return list(out)


async def start_crawl(frontier: Frontier, options: CrawlOptions) -> CrawlSpec:
    """Create the crawl job and queue its seeds (and sitemap reads); returns its spec.

    With ``options.recrawl`` (or a ``name`` an earlier crawl has), the earlier crawl's pages
    are queued again with their validators, so unchanged pages answer 304 or hash the same.
    """
    earlier: CrawlSpec | None = None
    if options.recrawl:
        earlier = await find_crawl(frontier, options.recrawl)
    elif options.name:
        named = [s for s in await frontier.specs() if s.name == options.name]
        earlier = named[-1] if named else None
    options = options.over(earlier)
    seeds = _seed_urls(options.seeds)
    if options.max_depth is not None and options.max_depth < 0:
        raise ConfigError("--max-depth must be 0 or more")
    if options.max_pages is not None and options.max_pages < 1:
        raise ConfigError("--max-pages must be 1 or more")
    scope: CrawlScopeName = options.scope or "prefix"  # type: ignore[assignment]  # built
    CrawlScope.build(seeds, scope, options.include, options.exclude)  # validates
    spec = CrawlSpec(
        id=_new_id(),
        seeds=seeds,
        scope=scope,
        include=list(options.include),
        exclude=list(options.exclude),
        max_depth=options.max_depth,
        max_pages=options.max_pages,
        sitemaps=options.sitemaps,
        name=options.name,
        created_at=time.time(),
        recrawl_of=earlier.id if earlier else None,
    )
    if spec.max_pages is not None:
        await frontier.create_cap(spec.id, spec.max_pages)
    await frontier.put_spec(spec)
    links = CrawlLinks(frontier, spec)
    revisit = await _earlier_pages(frontier, earlier) if earlier else []
    await links.add_roots(seeds, revisit)
    if spec.sitemaps:
        await links.add_sitemaps(seeds)
    return spec


async def _earlier_pages(frontier: Frontier, earlier: CrawlSpec) -> list[UrlTask]:
    """The pages an earlier crawl fetched, as tasks that carry their validators."""
    out: dict[str, UrlTask] = {}
    for kind in (FETCHED, UNCHANGED):
        for data in await frontier.read_events(earlier.id, kind):
            ev = crawl_event_decoder.decode(data)
            out[ev.url] = UrlTask(
                url=ev.url,
                id=url_id(ev.url),
                published_at=0.0,
                depth=ev.depth,
                etag=ev.etag,
                last_modified=ev.last_modified,
                content_hash=ev.content_hash,
            )
    return list(out.values())


async def cancel_crawl(frontier: Frontier, key: str) -> CrawlSpec:
    """Ask every worker to stop the crawl: URLs in flight finish, queued ones are skipped
    (reason ``cancelled``) as they come up; nothing else is touched."""
    spec = await find_crawl(frontier, key)
    if spec.state != "cancelled":
        spec = msgspec.structs.replace(spec, state="cancelled", cancelled_at=time.time())
        await frontier.put_spec(spec)
    return spec


async def crawl_status(frontier: Frontier, key: str) -> dict[str, Any]:
    """The status object of a crawl by id or name; CrawlNotFound if there is none."""
    spec = await find_crawl(frontier, key)
    return status_view(spec, await read_counts(frontier, spec.id))


async def list_crawls(frontier: Frontier) -> list[dict[str, Any]]:
    """The status object of every crawl, oldest first (`fleet crawl list`)."""
    return [status_view(s, await read_counts(frontier, s.id)) for s in await frontier.specs()]


# --------------------------------------------------------------------------- discovery


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


# --------------------------------------------------------------------------- the worker side


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


# --------------------------------------------------------------------------- layers


class CrawlCoordinator:
    """Releases the held layers of depth-limited crawls (every worker runs one; idempotent).

    Layer d is released once every URL at depth < d has its outcome (and, for layer 0,
    every sitemap was read). Without depth limits there is nothing to do.
    """

    def __init__(self, frontier: Frontier) -> None:
        self._f = frontier
        self._specs: list[CrawlSpec] = []
        self._listed_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every COORDINATOR_TICK_S until ``stop`` is set; a failed tick is logged and
        retried on the next one, never raised."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # NATS trouble: try again next tick
                log.warning("crawl coordinator: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=COORDINATOR_TICK_S)

    async def tick(self) -> int:
        """Release what is due; returns the number of tasks released."""
        now = time.monotonic()
        if now - self._listed_at > SPEC_LIST_EVERY_S:
            self._specs = [s for s in await self._f.specs() if layered(s)]
            self._listed_at = now
        released = 0
        for spec in self._specs:
            released += await self._release_due(spec)
        return released

    async def _release_due(self, spec: CrawlSpec) -> int:
        counts = await read_counts(self._f, spec.id)
        held = counts.raw.get(HOLD, {})
        if not held:
            return 0
        depth = min(held)
        if depth == 0 and counts.sitemaps_pending:
            return 0
        done_below = counts.below(TERMINAL, depth)
        if counts.below(frozenset({QUEUED}), depth) - done_below:
            return 0
        n = await self._f.release(spec.id, depth)
        log.info("crawl %s: released layer %d (%d URLs)", spec.id, depth, n)
        return n
