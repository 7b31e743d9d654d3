"""Crawlee's ParselCrawler on the benchmark site: ``enqueue_links`` from the root.

    python -m bench.crawlee_crawl --root URL --out items.jl --stats stats.json [--concurrency 32]

``enqueue_links(strategy="same-hostname")`` on every page (Crawlee's request queue keeps a
URL once), in-memory storage (as Scrapy's scheduler), no robots.txt, the same fields
extracted per page as the Scrapy crawl, items to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from crawlee import ConcurrencySettings
from crawlee.crawlers import ParselCrawler, ParselCrawlingContext
from crawlee.storage_clients import MemoryStorageClient


def _squash(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


async def crawl(root: str, out: Path, concurrency: int) -> dict[str, Any]:
    crawler = ParselCrawler(
        storage_client=MemoryStorageClient(),
        concurrency_settings=ConcurrencySettings(
            min_concurrency=concurrency,
            desired_concurrency=concurrency,
            max_concurrency=concurrency,
        ),
        configure_logging=False,
        max_request_retries=2,
    )
    items = out.open("w", encoding="utf-8")

    @crawler.router.default_handler
    async def page(context: ParselCrawlingContext) -> None:
        sel = context.selector
        has_main = bool(sel.xpath("//main"))
        item = {
            "url": context.request.url,
            "title": (sel.css("title::text").get() or "").strip(),
            "description": sel.css('meta[name="description"]::attr(content)').get() or "",
            "lang": sel.xpath("/html/@lang").get() or "",
            "headings": [
                _squash(h.css("::text").getall())
                for h in sel.css("main h1, main h2, main h3" if has_main else "h1, h2, h3")
            ],
            "text": sel.xpath(
                "normalize-space(//main)" if has_main else "normalize-space(//body)"
            ).get(default=""),
        }
        items.write(json.dumps(item) + "\n")
        await context.enqueue_links(strategy="same-hostname")

    started = time.perf_counter()
    try:
        stats = await crawler.run([root])
    finally:
        items.close()
    return {
        "elapsed_time_seconds": time.perf_counter() - started,
        "requests_finished": stats.requests_finished,
        "requests_failed": stats.requests_failed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Crawlee crawl for the crawl benchmark")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    stats = asyncio.run(crawl(args.root, args.out, args.concurrency))
    args.stats.write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
