"""Scrapy's CrawlSpider on the benchmark site: follow every same-host link from the root.

    python -m bench.scrapy_crawl --root URL --out items.jl --stats stats.json [--concurrency 32]

The crawl counterpart of bench/scrapy_baseline.py: one Rule with a LinkExtractor limited to
the site's host (``follow=True``), the same fields extracted per page, Scrapy's default
dupefilter (a URL is requested once), ROBOTSTXT_OBEY=False, CONCURRENT_REQUESTS =
CONCURRENT_REQUESTS_PER_DOMAIN = --concurrency, items to a JSON-lines feed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scrapy.crawler import CrawlerProcess
from scrapy.http import Response
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule

from bench.scrapy_baseline import BODY_TEXT_XPATH, TEXT_XPATH, _squash


class BenchCrawlSpider(CrawlSpider):
    name = "fleet-bench-crawl"

    def __init__(self, root: str, *args: Any, **kwargs: Any) -> None:
        parts = urlsplit(root)
        self.start_urls = [root]
        self.allowed_domains = [parts.hostname or ""]
        # LinkExtractor compares the netloc (port included); rules must exist before
        # CrawlSpider.__init__ compiles them.
        extractor = LinkExtractor(allow_domains=[parts.netloc])
        self.rules = (Rule(extractor, callback="parse_page", follow=True),)
        super().__init__(*args, **kwargs)

    def parse_start_url(self, response: Response, **kwargs: Any) -> Iterator[dict[str, Any]]:
        return self.parse_page(response)

    def parse_page(self, response: Response) -> Iterator[dict[str, Any]]:
        has_main = bool(response.xpath("//main"))
        canonical = response.css('link[rel="canonical"]::attr(href)').get()
        yield {
            "url": response.url,
            "status": response.status,
            "lang": response.xpath("/html/@lang").get(default=""),
            "title": response.css("title::text").get(default="").strip(),
            "description": response.css('meta[name="description"]::attr(content)').get(default=""),
            "canonical_url": response.urljoin(canonical) if canonical else response.url,
            "headings": [
                _squash(h.css("::text").getall())
                for h in response.css("main h1, main h2, main h3" if has_main else "h1, h2, h3")
            ],
            "text": response.xpath(TEXT_XPATH if has_main else BODY_TEXT_XPATH).get(default=""),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scrapy CrawlSpider for the crawl benchmark")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    process = CrawlerProcess(
        {
            "LOG_LEVEL": "WARNING",
            "ROBOTSTXT_OBEY": False,
            "CONCURRENT_REQUESTS": args.concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": args.concurrency,
            "FEEDS": {
                str(args.out): {"format": "jsonlines", "encoding": "utf8", "overwrite": True}
            },
        }
    )
    crawler = process.create_crawler(BenchCrawlSpider)
    process.crawl(crawler, root=args.root)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    args.stats.write_text(json.dumps(stats, default=str, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
