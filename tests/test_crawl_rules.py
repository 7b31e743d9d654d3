"""The pure parts of crawling: scope, link rules in extraction, sitemaps, counters; and the
fetcher's crawl modes (304, redirects handed back) against the loopback crawl site."""

from __future__ import annotations

import gzip
import json

import pytest

from fleet.crawl import CrawlCounts, crawl_state
from fleet.messages import CrawlSpec
from fleet.scrape.extract import extract
from fleet.scrape.fetch import Fetcher
from fleet.scrape.scope import CrawlScope, ScopeError, non_html, prefix_of
from fleet.scrape.sitemaps import gunzip_capped, parse_sitemap, robots_sitemaps
from fleet.settings import Settings
from tests.pipeline_helpers import cli
from tests.site import CrawlSite


def test_prefix_scope_is_the_seed_up_to_its_last_slash() -> None:
    assert prefix_of("https://a.org/docs/intro.html") == "https://a.org/docs/"
    assert prefix_of("https://a.org/docs/") == "https://a.org/docs/"
    assert prefix_of("https://a.org/") == "https://a.org/"
    scope = CrawlScope.build(["https://a.org/docs/intro.html"])
    assert scope.verdict("https://a.org/docs/api/x.html") == ""
    assert scope.verdict("https://a.org/blog/") == "scope"
    assert scope.verdict("http://a.org/docs/x") == "scope"  # the scheme is in the prefix


@pytest.mark.parametrize(
    ("scope", "url", "verdict"),
    [
        ("host", "http://docs.a.org/x", ""),
        ("host", "https://docs.a.org/y", ""),
        ("host", "https://a.org/", "scope"),
        ("host", "https://docs.a.org:8443/", "scope"),
        ("domain", "https://a.org/", ""),
        ("domain", "https://www.a.org/z", ""),
        ("domain", "https://a.org.evil.com/", "scope"),
        ("any", "https://elsewhere.net/", ""),
    ],
)
def test_scopes(scope: str, url: str, verdict: str) -> None:
    assert CrawlScope.build(["https://docs.a.org/start"], scope).verdict(url) == verdict


def test_domain_scope_uses_the_public_suffix_list() -> None:
    scope = CrawlScope.build(["https://www.bbc.co.uk/news"], "domain")
    assert scope.verdict("https://sport.bbc.co.uk/") == ""
    assert scope.verdict("https://other.co.uk/") == "scope"


def test_include_exclude_and_non_html() -> None:
    scope = CrawlScope.build(
        ["https://a.org/"], "host", include=[r"/docs/", r"/api/"], exclude=[r"\?print"]
    )
    assert scope.verdict("https://a.org/docs/x") == ""
    assert scope.verdict("https://a.org/blog/x") == "filtered"
    assert scope.verdict("https://a.org/docs/x?print=1") == "filtered"
    assert scope.verdict("https://a.org/docs/logo.PNG") == "not_html"
    assert non_html("https://a.org/f.tar.gz") and not non_html("https://a.org/v1.2/")
    with pytest.raises(ScopeError, match="--include"):
        CrawlScope.build(["https://a.org/"], include=["("])
    with pytest.raises(ScopeError, match="scope"):
        CrawlScope.build(["https://a.org/"], "planet")


def _links(html: str, url: str = "https://a.org/docs/page.html") -> tuple[list[str], bool]:
    ex = extract(
        html.encode(), final_url=url, content_type="text/html", charset="utf-8", max_links=100
    )
    return ex.links, ex.nofollow


def test_links_follow_area_and_base_and_skip_nofollow() -> None:
    links, nofollow = _links(
        '<html><head><base href="/docs/sub/"></head><body>'
        '<a href="a.html#frag">a</a><map><area href="b.html"></map>'
        '<a rel="nofollow" href="secret.html">s</a><a rel="ugc NoFollow" href="s2.html">s</a>'
        '<a href="mailto:x@a.org">m</a><a href="javascript:void(0)">j</a></body></html>'
    )
    assert links == ["https://a.org/docs/sub/a.html", "https://a.org/docs/sub/b.html"]
    assert not nofollow


@pytest.mark.parametrize("content", ["nofollow", "noindex, nofollow", "NONE"])
def test_meta_robots_nofollow(content: str) -> None:
    _, nofollow = _links(f'<meta name="robots" content="{content}"><a href="/x">x</a>')
    assert nofollow
    _, nofollow = _links('<meta name="robots" content="noindex"><a href="/x">x</a>')
    assert not nofollow


URLSET = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
    "<url><loc>https://A.org/one#x</loc></url><url><loc>https://a.org/two</loc></url>"
    "<url><loc>not a url</loc></url></urlset>"
)


def test_sitemaps_xml_gzip_text_index_and_robots() -> None:
    assert parse_sitemap(URLSET.encode()).pages == ["https://a.org/one", "https://a.org/two"]
    assert parse_sitemap(gzip.compress(URLSET.encode())).pages == [
        "https://a.org/one",
        "https://a.org/two",
    ]
    text = parse_sitemap(b"https://a.org/t1\n\nhttps://a.org/t2\n")
    assert text.pages == ["https://a.org/t1", "https://a.org/t2"]
    index = parse_sitemap(
        b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<sitemap><loc>https://a.org/s1.xml.gz</loc></sitemap></sitemapindex>"
    )
    assert index.sitemaps == ["https://a.org/s1.xml.gz"] and index.pages == []
    assert parse_sitemap(b"<html><body>no</body></html>").pages == []
    robots = "User-agent: *\nDisallow: /x\nSitemap: https://a.org/sm.xml\nsitemap: https://a.org/sm.xml\n"
    assert robots_sitemaps(robots) == ["https://a.org/sm.xml"]
    with pytest.raises(Exception, match="uncompressed"):
        gunzip_capped(gzip.compress(b"x" * 5000), limit=1000)


def test_counters_and_state() -> None:
    spec = CrawlSpec(id="c1", seeds=["https://a.org/"])
    counts = CrawlCounts(
        {
            "queued": {0: 1, 1: 3},
            "fetched": {0: 1, 1: 2},
            "skipped.cancelled": {1: 1},
            "link.scope": {1: 5},
            "link.depth": {2: 2},
            "indexed": {0: 1, 1: 2},
        }
    )
    assert counts.outstanding == 0 and counts.settled
    assert counts.discovered == 4 + 2
    assert counts.skipped == {"cancelled": 1, "depth": 2, "scope": 5}
    assert crawl_state(spec, counts) == "done"
    assert counts.below(frozenset({"queued"}), 1) == 1
    running = CrawlCounts({"queued": {0: 1}})
    assert crawl_state(spec, running) == "running" and not running.settled


async def test_fetcher_crawl_modes(crawl_site: CrawlSite) -> None:
    settings = Settings(allow_hosts=(crawl_site.hostport,))
    async with Fetcher(settings) as fetcher:
        moved = await fetcher.fetch(crawl_site.url("/docs/old.html"), follow_redirects=False)
        assert moved.status == 301 and moved.headers["location"] == "/docs/p2.html"
        page = await fetcher.fetch(crawl_site.url("/docs/p4.html"))
        etag = page.headers["etag"]
        same = await fetcher.fetch(crawl_site.url("/docs/p4.html"), headers={"If-None-Match": etag})
        assert same.status == 304 and same.body == b""
        crawl_site.change("/docs/p4.html")
        changed = await fetcher.fetch(
            crawl_site.url("/docs/p4.html"), headers={"If-None-Match": etag}
        )
        assert changed.status == 200 and changed.headers["etag"] != etag


def test_crawl_commands_name_the_fix(crawl_settings: Settings) -> None:
    out = cli(crawl_settings, "crawl", "status", "cnothere")
    assert out.returncode == 2 and "fleet crawl list" in out.stderr
    out = cli(crawl_settings, "crawl", "start", "ftp://a.org/")
    assert out.returncode == 2 and "seed" in out.stderr
    out = cli(crawl_settings, "crawl", "start", "https://a.org/", "--include", "(")
    assert out.returncode == 2 and "--include" in out.stderr
    out = cli(crawl_settings, "crawl", "list", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
