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

Modules: ``jobs`` (start, find, cancel, status, list), ``counts`` (the counters and the
status object), ``links`` (claiming, counting and queueing discovered URLs), ``work`` (a
worker's crawl tasks) and ``coordinator`` (releasing held layers). Importing this package
brings in the whole scraping stack (``work``); light commands import it lazily.
"""

from fleet.crawl.coordinator import COORDINATOR_TICK_S, SPEC_LIST_EVERY_S, CrawlCoordinator
from fleet.crawl.counts import (
    DEPTH,
    MAX_PAGES,
    CrawlCounts,
    crawl_state,
    read_counts,
    status_view,
)
from fleet.crawl.jobs import (
    CrawlNotFound,
    CrawlOptions,
    cancel_crawl,
    cancelled_view,
    crawl_status,
    find_crawl,
    list_crawls,
    start_crawl,
    started_view,
)
from fleet.crawl.links import CrawlLinks, layered
from fleet.crawl.work import CANCELLED, CrawlWork

__all__ = [
    "CANCELLED",
    "COORDINATOR_TICK_S",
    "DEPTH",
    "MAX_PAGES",
    "SPEC_LIST_EVERY_S",
    "CrawlCoordinator",
    "CrawlCounts",
    "CrawlLinks",
    "CrawlNotFound",
    "CrawlOptions",
    "CrawlWork",
    "cancel_crawl",
    "cancelled_view",
    "crawl_state",
    "crawl_status",
    "find_crawl",
    "layered",
    "list_crawls",
    "read_counts",
    "start_crawl",
    "started_view",
    "status_view",
]
