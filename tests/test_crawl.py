"""Crawls end to end: real nats-server, real `fleet worker` / `fleet indexer` processes, a
loopback site whose link graph the test knows (tests/site.py CrawlSite)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.settings import Settings
from tests.conftest import Canary, Roles, fleet_cli, wait_for
from tests.pipeline_helpers import (
    cli,
    crawl_view,
    indexed_urls,
    sqlite_path,
    start_crawl_cli,
    wait_crawl_settled,
    write_urls,
)
from tests.site import CrawlSite


@pytest.fixture
def fleet_roles(crawl_settings: Settings) -> Iterator[Roles]:
    """Two workers and an indexer against the test's NATS server."""
    roles = Roles(crawl_settings)
    try:
        roles.start("indexer")
        roles.start("worker")
        roles.start("worker")
        yield roles
    finally:
        roles.stop_all()


def _paths(site: CrawlSite, urls: dict[str, int]) -> set[str]:
    prefix = site.url("")
    return {u.removeprefix(prefix) for u in urls}


async def test_crawl_from_the_root_finds_exactly_the_reachable_pages(
    crawl_settings: Settings, crawl_site: CrawlSite, canary: Canary, fleet_roles: Roles
) -> None:
    site = crawl_site
    crawl = start_crawl_cli(crawl_settings, site.url("/docs/index.html"), "--name", "docs")
    view = await wait_crawl_settled(crawl_settings, crawl)

    reachable = site.reachable()
    pages = site.pages_of(reachable)
    # Each reachable URL requested exactly once; nothing else (nofollow, meta nofollow,
    # out of prefix, images, other hosts) at all.
    assert dict(site.hits) == dict.fromkeys(reachable, 1)
    assert site.robots_requests == 1  # obeyed: fetched once for the whole fleet
    assert canary.connections == 0
    assert _paths(site, indexed_urls(crawl_settings)) == pages
    assert set(indexed_urls(crawl_settings).values()) == {1}
    assert view["state"] == "done"
    assert view["discovered"] == len(reachable)
    assert view["fetched"] == view["indexed"] == len(pages)
    assert view["redirected"] == len(site.redirects)
    assert view["queued"] == 0
    assert view["dead_lettered"] == 0
    # Out of scope: /blog/b1.html and one external URL per page whose links are followed
    # (not the meta-nofollow one); images by extension.
    assert view["skipped"]["scope"] == 1 + len(pages) - 1
    assert view["skipped"]["not_html"] == len(pages) - 1


async def test_max_depth_is_exact(
    crawl_settings: Settings, crawl_site: CrawlSite, fleet_roles: Roles, tmp_path: Path
) -> None:
    site = crawl_site
    crawl = start_crawl_cli(crawl_settings, site.url("/docs/index.html"), "--max-depth", "3")
    # A plain published URL shares the workers with the crawl, and stays out of its counts.
    plain = site.url("/docs/orphan1.html")
    urls = write_urls(tmp_path / "urls.txt", [plain])
    assert cli(crawl_settings, "publish", str(urls)).returncode == 0
    view = await wait_crawl_settled(crawl_settings, crawl)
    within = site.reachable(max_depth=3)
    assert len(within) < len(site.reachable())
    assert dict(site.hits) == {**dict.fromkeys(within, 1), "/docs/orphan1.html": 1}
    assert view["state"] == "done"
    assert view["fetched"] == len(site.pages_of(within))
    assert view["skipped"]["depth"] > 0
    assert plain in indexed_urls(crawl_settings)


async def test_include_exclude_and_max_pages(
    crawl_settings: Settings, crawl_site: CrawlSite, fleet_roles: Roles
) -> None:
    site = crawl_site
    root = site.url("/docs/index.html")
    crawl = start_crawl_cli(crawl_settings, root, "--exclude", r"/p1\d\.html$", "--scope", "host")
    view = await wait_crawl_settled(crawl_settings, crawl)
    assert not any(p.startswith("/docs/p1") and len(p) == len("/docs/p10.html") for p in site.hits)
    assert "/blog/b1.html" in site.hits  # scope host: /blog/ is in
    assert view["skipped"]["filtered"] > 0

    site.hits.clear()
    capped = start_crawl_cli(crawl_settings, root, "--max-pages", "7", "--include", "/docs/")
    view = await wait_crawl_settled(crawl_settings, capped)
    assert sum(site.hits.values()) == 7
    assert view["fetched"] + view["redirected"] == 7
    assert view["skipped"]["max_pages"] > 0
    assert view["discovered"] == 7 + view["skipped"]["max_pages"]


async def test_sitemaps_add_the_pages_no_link_reaches(
    crawl_settings: Settings, crawl_site: CrawlSite, fleet_roles: Roles
) -> None:
    site = crawl_site
    crawl = start_crawl_cli(crawl_settings, site.url("/docs/index.html"), "--sitemaps")
    view = await wait_crawl_settled(crawl_settings, crawl)
    for path in (*site.orphans, "/sitemap.xml", "/sitemaps/index.xml"):
        assert site.hits[path] == 1, path
    # The politeness gate's read and the crawl's own (for its Sitemap: lines).
    assert site.robots_requests == 2
    assert site.hits["/sitemaps/pages.xml.gz"] == site.hits["/sitemaps/list.txt"] == 1
    assert "/blog/b9.html" not in site.hits  # listed, but out of scope
    assert view["sitemaps_read"] == 5
    assert view["fetched"] == len(site.pages_of(site.reachable())) + len(site.orphans)
    assert max(site.hits.values()) == 1


async def test_recrawl_sends_conditional_requests(
    crawl_settings: Settings, crawl_site: CrawlSite, fleet_roles: Roles
) -> None:
    site = crawl_site
    first = start_crawl_cli(crawl_settings, site.url("/docs/index.html"), "--name", "docs")
    await wait_crawl_settled(crawl_settings, first)
    db = sqlite_path(crawl_settings)
    with sqlite3.connect(db) as conn:
        before = dict(conn.execute("SELECT url, fetched_at FROM pages").fetchall())
    site.change("/docs/p4.html")  # new content
    site.touch("/docs/p6.html")  # new ETag, same content: unchanged by its hash
    site.hits.clear()
    again = start_crawl_cli(crawl_settings, "--recrawl", first)
    view = await wait_crawl_settled(crawl_settings, again)
    pages = site.pages_of(site.reachable())
    assert view["fetched"] == 1
    assert view["unchanged"] == len(pages) - 1
    assert sum(site.not_modified.values()) == len(pages) - 2
    with sqlite3.connect(db) as conn:
        after = dict(conn.execute("SELECT url, fetched_at FROM pages").fetchall())
    rewritten = {u for u in after if after[u] != before[u]}
    assert rewritten == {site.url("/docs/p4.html")}
    # A crawl started again under its name is a recrawl of the last one.
    named = start_crawl_cli(crawl_settings, "--name", "docs")
    view = await wait_crawl_settled(crawl_settings, named)
    assert view["recrawl_of"] == again
    assert view["fetched"] == 0


def _slow_roles(settings: Settings) -> Roles:
    """Two workers with 2 URLs in flight each, and an indexer."""
    roles = Roles(settings.replace(worker_concurrency=2))
    roles.start("indexer")
    roles.start("worker")
    roles.start("worker")
    return roles


async def test_cancel_drops_the_queued_urls(
    crawl_settings: Settings, crawl_site: CrawlSite
) -> None:
    site = crawl_site
    site.delay_s = 0.3
    roles = _slow_roles(crawl_settings)
    try:
        await _cancel_mid_crawl(crawl_settings, site)
    finally:
        roles.stop_all()


async def _cancel_mid_crawl(crawl_settings: Settings, site: CrawlSite) -> None:
    crawl = start_crawl_cli(crawl_settings, site.url("/docs/index.html"))

    async def some_fetched() -> bool:
        return bool((await crawl_view(crawl_settings, crawl))["fetched"] >= 3)

    await wait_for(some_fetched, timeout=60)
    out = cli(crawl_settings, "crawl", "cancel", crawl)
    assert out.returncode == 0, out.stderr
    view = await wait_crawl_settled(crawl_settings, crawl)
    hits_at_settle = sum(site.hits.values())
    assert view["state"] == "cancelled"
    assert view["skipped"].get("cancelled", 0) > 0
    total = view["fetched"] + view["redirected"] + view["skipped"]["cancelled"]
    assert total + view["dead_lettered"] == view["discovered"]
    assert hits_at_settle < len(site.reachable())
    assert out.stdout.strip() == crawl


@pytest.mark.fault
async def test_sigkill_of_a_worker_mid_crawl_loses_nothing(
    crawl_settings: Settings, crawl_site: CrawlSite
) -> None:
    site = crawl_site
    site.delay_s = 0.2
    settings = crawl_settings.replace(worker_concurrency=4)
    roles = Roles(settings)
    try:
        roles.start("indexer")
        victim = roles.start("worker")
        roles.start("worker")
        crawl = start_crawl_cli(settings, site.url("/docs/index.html"), "--sitemaps")

        async def under_way() -> bool:
            return bool((await crawl_view(settings, crawl))["fetched"] >= 10)

        await wait_for(under_way, timeout=60)
        victim.kill()  # SIGKILL: its in-flight URLs come back after AckWait
        victim.wait()
        roles.start("worker")
        view = await wait_crawl_settled(settings, crawl)
    finally:
        roles.stop_all()
    pages = site.pages_of(site.reachable()) | set(site.orphans)
    assert _paths(site, indexed_urls(settings)) == pages
    assert set(indexed_urls(settings).values()) == {1}
    assert view["state"] == "done"
    assert view["fetched"] == view["indexed"] == len(pages)
    assert view["discovered"] == len(site.reachable()) + len(site.orphans)
    assert view["queued"] == view["dead_lettered"] == 0
    # Only what the killed worker had in flight was requested twice.
    assert all(site.hits[p] >= 1 for p in pages)
    assert sum(site.hits.values()) - len(site.hits) <= settings.worker_concurrency


def test_fleet_run_crawl_all_in_one(crawl_site: CrawlSite, tmp_path: Path) -> None:
    site = crawl_site
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env |= {"FLEET_ALLOW_HOSTS": site.hostport, "FLEET_SINK": f"sqlite:///{tmp_path / 'r.db'}"}
    seed = site.url("/docs/index.html")
    out = subprocess.run(
        [*fleet_cli(), "run", "--crawl", seed, "--workers", "2", "--max-depth", "2", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    within = site.reachable(max_depth=2)
    pages = site.pages_of(within)
    for key in ("published", "indexed", "dead_lettered", "invalid", "duplicates", "seconds"):
        assert key in summary
    assert summary["pages_per_s"] > 0
    # Discovered: in scope, followed or over the depth limit.
    assert summary["discovered"] == len(within) + summary["skipped"]["depth"]
    assert summary["published"] == len(within)
    assert summary["indexed"] == len(pages)
    assert summary["dead_lettered"] == summary["invalid"] == 0
    assert summary["skipped"]["depth"] > 0
    assert dict(site.hits) == dict.fromkeys(within, 1)
