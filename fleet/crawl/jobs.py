"""Crawl jobs: start (a new crawl or a recrawl), find, cancel, status and list.

What `fleet crawl start|list|status|cancel` and ``/api/crawls`` do; the crawl's spec lives
in the ``FLEET_CRAWLS`` bucket (``Frontier.put_spec``).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from fleet.crawl.counts import read_counts, status_view
from fleet.crawl.links import CrawlLinks
from fleet.errors import ConfigError, InvalidUrl
from fleet.messages import CrawlScopeName, CrawlSpec, UrlTask, crawl_event_decoder
from fleet.nats.frontier import FETCHED, UNCHANGED, Frontier
from fleet.scrape.scope import CrawlScope
from fleet.urls import normalize_url, url_id


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


def _new_id() -> str:
    return "c" + secrets.token_hex(5)


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
