"""Layer release: the held layers of depth-limited crawls, each let go once the one before
it is done (every worker runs a ``CrawlCoordinator``; releasing twice is harmless)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from fleet.crawl.counts import read_counts
from fleet.crawl.links import layered
from fleet.messages import CrawlSpec
from fleet.nats.frontier import HOLD, QUEUED, TERMINAL, Frontier

log = logging.getLogger(__name__)

COORDINATOR_TICK_S: Final = 0.5
SPEC_LIST_EVERY_S: Final = 2.0


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
