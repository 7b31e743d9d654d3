"""Crawlee's PlaywrightCrawler on the render benchmark's pages (``bench.render`` runs it).

    python -m bench.crawlee_render --urls FILE --stats stats.json --concurrency 4 \
        [--chromium PATH]

The same Chromium as fleet (``executable_path`` in the launch options; Debian's
headless shell), headless, the same concurrency (fixed: min = desired = max), in-memory
storage, no retries beyond two. Each page: Crawlee's navigation (``page.goto``, load
event), then the page's HTML and its visible text, as fleet extracts them. The rate is
taken between the first and the last page handled, so the browser's start is not in it
(as fleet's worker is measured once its browser is up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from crawlee import ConcurrencySettings
from crawlee.crawlers import PlaywrightCrawler, PlaywrightCrawlingContext
from crawlee.storage_clients import MemoryStorageClient

from fleet.scrape.render.chromium import CHROMIUM_ARGS


async def crawl(urls: list[str], concurrency: int, chromium: str | None) -> dict[str, Any]:
    launch: dict[str, Any] = {"args": list(CHROMIUM_ARGS)}
    if chromium:
        launch["executable_path"] = chromium
    crawler = PlaywrightCrawler(
        storage_client=MemoryStorageClient(),
        concurrency_settings=ConcurrencySettings(
            min_concurrency=concurrency,
            desired_concurrency=concurrency,
            max_concurrency=concurrency,
        ),
        browser_type="chromium",
        headless=True,
        browser_launch_options=launch,
        configure_logging=False,
        max_request_retries=2,
        request_handler_timeout=timedelta(seconds=60),
    )
    done: list[float] = []
    chars = 0

    @crawler.router.default_handler
    async def page(context: PlaywrightCrawlingContext) -> None:
        nonlocal chars
        html = await context.page.content()
        text = await context.page.inner_text("body")
        chars += len(html) + len(text)
        done.append(time.perf_counter())

    started = time.perf_counter()
    stats = await crawler.run(urls)
    finished = time.perf_counter()
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else 0.0
    return {
        "pages": len(done),
        "failed": stats.requests_failed,
        "seconds": finished - started,
        "pages_per_s": steady,
        "chars": chars,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chromium", default=None)
    args = parser.parse_args()
    urls = args.urls.read_text().split()
    result = asyncio.run(crawl(urls, args.concurrency, args.chromium))
    args.stats.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
