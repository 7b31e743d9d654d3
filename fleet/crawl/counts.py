"""A crawl's counters, read from its event messages, and the status built on them.

Besides the scope's reasons (``fleet.scrape.scope``), a link is skipped for the crawl's own
limits: ``depth`` (past ``--max-depth``) and ``max_pages`` (past the page cap). Those two are
still in scope: they count as discovered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal

from fleet.messages import CrawlSpec
from fleet.nats.frontier import (
    DEAD,
    FETCHED,
    INDEX_FAILED,
    INDEXED,
    LINK,
    QUEUED,
    REDIRECTED,
    RELEASED,
    SITEMAP_DONE,
    SITEMAP_QUEUED,
    SKIPPED,
    UNCHANGED,
    Frontier,
)

DEPTH: Final = "depth"
MAX_PAGES: Final = "max_pages"
# Link verdicts that are still in scope (counted as discovered).
_IN_SCOPE_SKIPS: Final = frozenset({DEPTH, MAX_PAGES})


@dataclasses.dataclass
class CrawlCounts:
    """A crawl's counters, read from its event messages (exact once the crawl is done)."""

    raw: dict[str, dict[int, int]]

    def total(self, kind: str) -> int:
        """Events of ``kind`` (bare kind only, not ``kind.reason``), all depths summed."""
        return sum(self.raw.get(kind, {}).values())

    def below(self, kinds: frozenset[str], depth: int) -> int:
        """Events of ``kinds`` (or ``kind.reason``) at depths under ``depth``."""
        return sum(
            n
            for key, by_depth in self.raw.items()
            if key.split(".", 1)[0] in kinds
            for d, n in by_depth.items()
            if d < depth
        )

    def reasons(self, kind: str) -> dict[str, int]:
        """Events of ``kind.<reason>`` by reason, all depths summed (the bare kind excluded)."""
        out: dict[str, int] = {}
        for key, by_depth in self.raw.items():
            head, _, reason = key.partition(".")
            if head == kind and reason:
                out[reason] = out.get(reason, 0) + sum(by_depth.values())
        return out

    @property
    def queued_total(self) -> int:
        """URLs ever queued (held ones included), each once: done or not."""
        return self.total(QUEUED)

    @property
    def outstanding(self) -> int:
        """Queued URLs without an outcome yet (held, waiting or in flight)."""
        done = sum(self.total(k) for k in (FETCHED, UNCHANGED, REDIRECTED, DEAD))
        return self.queued_total - done - sum(self.reasons(SKIPPED).values())

    @property
    def sitemaps_pending(self) -> int:
        """Sitemap and robots.txt reads queued but not done (layer 0 waits for them)."""
        return self.total(SITEMAP_QUEUED) - self.total(SITEMAP_DONE)

    @property
    def index_pending(self) -> int:
        """Fetched pages the indexer has neither indexed nor failed yet."""
        return self.total(FETCHED) - self.total(INDEXED) - self.total(INDEX_FAILED)

    @property
    def settled(self) -> bool:
        """Nothing left: every URL has its outcome and every page is indexed (or failed)."""
        return not (self.outstanding or self.sitemaps_pending or self.index_pending)

    @property
    def skipped(self) -> dict[str, int]:
        """URLs not fetched, by reason: links not followed plus queued tasks skipped."""
        out = self.reasons(LINK)
        for reason, n in self.reasons(SKIPPED).items():
            out[reason] = out.get(reason, 0) + n
        return dict(sorted(out.items()))

    @property
    def discovered(self) -> int:
        """Distinct in-scope URLs found: queued, or over the depth or page limit."""
        links = self.reasons(LINK)
        return self.queued_total + sum(links.get(r, 0) for r in _IN_SCOPE_SKIPS)


def crawl_state(spec: CrawlSpec, counts: CrawlCounts) -> Literal["running", "done", "cancelled"]:
    """cancelled once asked to stop; done when settled; running otherwise."""
    if spec.state == "cancelled":
        return "cancelled"
    return "done" if counts.settled and counts.queued_total else "running"


def status_view(spec: CrawlSpec, counts: CrawlCounts) -> dict[str, Any]:
    """The `fleet crawl status --json` object."""
    released = counts.raw.get(RELEASED, {})
    return {
        "crawl": spec.id,
        "name": spec.name,
        "state": crawl_state(spec, counts),
        "settled": counts.settled,
        "seeds": list(spec.seeds),
        "scope": spec.scope,
        "max_depth": spec.max_depth,
        "max_pages": spec.max_pages,
        "discovered": counts.discovered,
        "queued": counts.outstanding,
        "fetched": counts.total(FETCHED),
        "unchanged": counts.total(UNCHANGED),
        "redirected": counts.total(REDIRECTED),
        "indexed": counts.total(INDEXED),
        "dead_lettered": counts.total(DEAD) + counts.total(INDEX_FAILED),
        "skipped": counts.skipped,
        "sitemaps_read": counts.total(SITEMAP_DONE),
        "layer": max(released) if released else 0,
        "created_at": spec.created_at,
        "recrawl_of": spec.recrawl_of,
    }


async def read_counts(frontier: Frontier, crawl: str) -> CrawlCounts:
    """The crawl's counters as they stand now (one ``stream_info`` call)."""
    return CrawlCounts(await frontier.counts(crawl))
