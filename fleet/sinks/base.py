"""What every search sink is: the ``Sink`` protocol and the values it returns.

Sinks know nothing of NATS. The indexer hands them batches of ``Page`` documents; a sink
returns from ``upsert`` only once the accepted documents are durably committed, raises
``SinkUnavailable`` when it cannot be reached (the indexer backs off and acks nothing), and
returns a ``Rejected`` for each document it refuses for good (the indexer dead-letters those).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fleet.messages import Page

SINK_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db or http(s)://host:7700"


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the page's URL, its title, and a snippet of its text around the match."""

    url: str
    title: str
    snippet: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A document the sink refuses permanently; retrying the same bytes cannot help."""

    id: str
    reason: str


@runtime_checkable
class Sink(Protocol):
    """A search store the indexer writes pages to and `fleet search` reads (SQLite, Meilisearch)."""

    async def open(self, *, readonly: bool = False) -> None:
        """Create the schema / index and its settings; idempotent.

        ``readonly`` (for `fleet search`) connects without creating or changing anything, so
        a search-only Meilisearch key is enough.
        """

    async def upsert(self, pages: Sequence[Page]) -> list[Rejected]:
        """Insert or replace pages; return only once the accepted ones are committed."""

    async def search(self, query: str, limit: int) -> list[Hit]:
        """Best hits first; an empty or all-punctuation query gives []."""

    async def count(self) -> int:
        """Number of documents held; ``SinkUnavailable`` when the store cannot be reached."""

    async def close(self) -> None:
        """Release the connection and the sink's thread; a no-op when it is not open."""
