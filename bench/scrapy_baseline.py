"""The Scrapy baseline: fetch exactly the URLs of a file and extract what fleet extracts.

    python -m bench.scrapy_baseline --urls URLS.txt --out items.jl --stats stats.json \\
        [--concurrency 32]

Scrapy's default settings except LOG_LEVEL=WARNING, ROBOTSTXT_OBEY=False and
CONCURRENT_REQUESTS = CONCURRENT_REQUESTS_PER_DOMAIN = --concurrency (Scrapy's defaults are
16 and 8; the whole site is one host, so 8 would cap Scrapy below what it can do). No link
following: start_urls are the file's lines, every item goes to a JSON-lines feed. After the
crawl, Scrapy's stats (including elapsed_time_seconds, the crawl time without interpreter
start-up) are written to --stats.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

# The main text as one whitespace-normalised string, computed inside libxml2. Joining
# response.css("main ::text").getall() is the more common idiom but builds a Selector per
# text node and costs ~8 ms more per page on the benchmark site: the baseline gets the fast
# form (the site has no <script>/<style> inside <main>, so both give the same words).
TEXT_XPATH = "normalize-space(//main)"
BODY_TEXT_XPATH = "normalize-space(//body)"


def _squash(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


class BenchSpider(scrapy.Spider):
    name = "fleet-bench-baseline"

    def __init__(self, urls_file: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with open(urls_file, encoding="utf-8") as fh:
            self.start_urls = [line.strip() for line in fh if line.strip()]

    def parse(self, response: Response, **kwargs: Any) -> Iterator[dict[str, Any]]:
        canonical = response.css('link[rel="canonical"]::attr(href)').get()
        has_main = bool(response.xpath("//main"))
        text = response.xpath(TEXT_XPATH if has_main else BODY_TEXT_XPATH).get(default="")
        links: dict[str, None] = {}
        for href in response.css("a::attr(href)").getall():
            url = urldefrag(response.urljoin(href.strip())).url
            if url.startswith(("http://", "https://")):
                links[url] = None
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
            "text": text,
            "links": list(links),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scrapy baseline for the fleet benchmark")
    parser.add_argument("--urls", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)

    settings: dict[str, Any] = {
        "LOG_LEVEL": "WARNING",
        "ROBOTSTXT_OBEY": False,
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.concurrency,
        "FEEDS": {
            str(args.out): {"format": "jsonlines", "encoding": "utf8", "overwrite": True},
        },
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(BenchSpider)
    process.crawl(crawler, urls_file=str(args.urls))
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    args.stats.write_text(json.dumps(stats, default=str, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
