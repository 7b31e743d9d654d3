"""Sitemaps: robots.txt ``Sitemap:`` lines, XML sitemaps and indexes, gzip, text. Pure.

Parsing is ultimate-sitemap-parser's (``usp``: XML urlsets and indexes, RSS/Atom, text
sitemaps, lenient with real-world XML) and protego's for robots.txt (the parser Scrapy
uses). Fetching is the worker's, through the guarded fetcher; nothing here does I/O.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from dataclasses import dataclass
from typing import Final

from fleet.errors import BodyTooLarge, InvalidUrl
from fleet.scrape.extract import decode_body
from fleet.urls import normalize_url

log = logging.getLogger(__name__)

# The sitemap protocol's own limits: 50,000 URLs and 50 MB uncompressed per file.
MAX_SITEMAP_BYTES: Final = 50 * 1024 * 1024
MAX_SITEMAP_URLS: Final = 50_000
SITEMAP_CONTENT_TYPES: Final = frozenset(
    {
        "application/xml",
        "text/xml",
        "application/gzip",
        "application/x-gzip",
        "application/octet-stream",
        "text/plain",
        "application/rss+xml",
        "application/atom+xml",
    }
)


@dataclass(frozen=True, slots=True)
class SitemapContent:
    """What one sitemap file lists: pages, and (for an index) further sitemaps."""

    pages: list[str]
    sitemaps: list[str]


def robots_sitemaps(robots_txt: str) -> list[str]:
    """The normalised ``Sitemap:`` URLs of a robots.txt, in order, without repeats."""
    from protego import Protego  # noqa: PLC0415 - loaded by the first crawl with --sitemaps

    out: dict[str, None] = {}
    for raw in Protego.parse(robots_txt).sitemaps:
        try:
            out[normalize_url(raw)] = None
        except InvalidUrl:
            log.debug("ignoring sitemap line %r", raw)
    return list(out)


def gunzip_capped(body: bytes, limit: int = MAX_SITEMAP_BYTES) -> bytes:
    """A gzip body decompressed (raises BodyTooLarge past ``limit``); others as they are."""
    if body[:2] != b"\x1f\x8b":
        return body  # not gzip (or already decompressed by Content-Encoding)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise gzip.BadGzipFile(f"bad gzip sitemap: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"sitemap is over {limit} bytes uncompressed")
    return data


def parse_sitemap(body: bytes, charset: str | None = None) -> SitemapContent:
    """Pages and child sitemaps of one sitemap file (XML, index, gzip or text).

    URLs that do not normalise are dropped; at most MAX_SITEMAP_URLS pages are kept.
    A file that is no sitemap at all gives nothing (logged), not an error.
    """
    # Loaded by the first sitemap read: usp's import costs every worker ~0.1 s otherwise.
    from usp.objects.sitemap import AbstractIndexSitemap, InvalidSitemap  # noqa: PLC0415
    from usp.tree import sitemap_from_str  # noqa: PLC0415

    text = decode_body(gunzip_capped(body), charset)
    parsed = sitemap_from_str(text)
    pages: dict[str, None] = {}
    children: dict[str, None] = {}
    if isinstance(parsed, AbstractIndexSitemap):
        for sub in parsed.sub_sitemaps:
            _add(children, sub.url)
    elif isinstance(parsed, InvalidSitemap):
        log.info("not a sitemap: %s", parsed.reason)
    for page in parsed.all_pages():
        if len(pages) >= MAX_SITEMAP_URLS:
            break
        _add(pages, page.url)
    return SitemapContent(pages=list(pages), sitemaps=list(children))


def _add(into: dict[str, None], raw: str) -> None:
    with contextlib.suppress(InvalidUrl):
        into[normalize_url(raw)] = None
