"""What every search sink is: the ``Sink`` protocol and the values it returns.

Sinks know nothing of NATS. The indexer hands them batches of ``Page`` documents; a sink
returns from ``upsert`` only once the accepted documents are durably committed, raises
``SinkUnavailable`` when it cannot be reached (the indexer backs off and acks nothing), and
returns a ``Rejected`` for each document it refuses for good (the indexer dead-letters those).

A sink that can be backed up is also ``Backupable``: it writes a consistent copy of itself into
a directory and fills itself back from one (``fleet.backup`` adds the manifest and checksums).

The read side (`fleet search`, `fleet serve`) asks for a page of hits (``search_page``:
offset, host/lang filters, an estimated total) and for one stored page by id (``get``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from fleet.messages import Page

SINK_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db or http(s)://host:7700"


# Document ids are hex (fleet.urls.url_id); this is the wider rule Meilisearch accepts, so a
# malformed id is refused before it reaches a URL path or a query.
DOCUMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,511}$")


# Filter values go into Meilisearch filter expressions: only these characters are allowed.
FILTER_VALUE = re.compile(r"^[a-z0-9._:-]{1,253}$")


def url_host(url: str) -> str:
    """The host a page is filed under (lowercase, no port): the ``host`` search filter."""
    return (urlsplit(url).hostname or "").lower()


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the page's URL, its title, and a snippet of its text around the match."""

    url: str
    title: str
    snippet: str
    id: str = ""
    # Relevance, higher is better; each sink has its own scale (SQLite: -bm25,
    # Meilisearch: rankingScore in [0, 1]). None when the sink gives none.
    score: float | None = None


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Restrict hits to pages of one host (``example.com``) and/or one language (``en``).

    Values are lowercase and match ``FILTER_VALUE``; ``SearchFilters.of`` checks them.
    """

    host: str | None = None
    lang: str | None = None

    @classmethod
    def of(cls, *, host: str | None = None, lang: str | None = None) -> SearchFilters:
        """Normalised filters; raises ValueError naming the bad value."""
        values: dict[str, str | None] = {}
        for name, raw in (("host", host), ("lang", lang)):
            value = (raw or "").strip().lower() or None
            if value is not None and not FILTER_VALUE.match(value):
                raise ValueError(
                    f"{name} {raw!r} is not valid: use letters, digits, '.', '-', ':' or '_' "
                    "(e.g. host=example.com, lang=en)"
                )
            values[name] = value
        return cls(host=values["host"], lang=values["lang"])

    @property
    def empty(self) -> bool:
        """True when neither host nor lang restricts the hits."""
        return self.host is None and self.lang is None


NO_FILTERS = SearchFilters()


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of hits, best first; ``total`` counts every match (estimated by Meilisearch)."""

    hits: list[Hit]
    total: int | None = None


@dataclass(frozen=True, slots=True)
class StoredPage:
    """A page as the sink holds it (what `GET /api/pages/{id}` returns)."""

    id: str
    url: str
    canonical_url: str = ""
    host: str = ""
    title: str = ""
    description: str = ""
    headings: list[str] = field(default_factory=list)
    text: str = ""
    lang: str = ""
    # Meilisearch documents written before links were stored have none.
    links: list[str] = field(default_factory=list)
    via: str = "http"
    fetched_at: float = 0.0
    content_hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The page as a plain dict of its fields."""
        return asdict(self)


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

    async def search(
        self, query: str, limit: int, *, offset: int = 0, filters: SearchFilters = NO_FILTERS
    ) -> list[Hit]:
        """Best hits first; an empty or all-punctuation query gives []."""

    async def search_page(
        self, query: str, limit: int, *, offset: int = 0, filters: SearchFilters = NO_FILTERS
    ) -> SearchPage:
        """Like ``search``, with the number of all matching pages."""

    async def get(self, page_id: str) -> StoredPage | None:
        """The stored page with this id, or None."""

    async def count(self) -> int:
        """Number of documents held; ``SinkUnavailable`` when the store cannot be reached."""

    async def close(self) -> None:
        """Release the connection and the sink's thread; a no-op when it is not open."""


@dataclass(frozen=True, slots=True)
class SinkBackup:
    """What a sink wrote into a backup directory: the facts ``fleet.backup`` puts in the manifest.

    ``files`` are plain names inside the directory; ``details`` are the kind's own facts (the
    SQLite page count and schema version, the Meilisearch dump's uid and location).
    """

    kind: str
    pages: int
    files: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backupable(Sink, Protocol):
    """A sink that copies itself into a directory and can be filled back from one."""

    kind: str

    async def backup(self, directory: Path) -> SinkBackup:
        """Write a consistent copy of the (open) sink into ``directory``, which exists and is empty.

        Safe while an indexer writes: the copy is the sink as of one moment, never half a batch.
        """

    async def restore(self, directory: Path, backup: SinkBackup) -> int:
        """Replace what this (open) sink holds with the backup in ``directory``, then check it.

        Returns the pages the sink holds afterwards; raises ``RestoreFailed`` when the check
        fails (corruption, pages missing).
        """
