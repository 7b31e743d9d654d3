"""What every search sink is: the ``Sink`` protocol and the values it returns.

Sinks know nothing of NATS. The indexer hands them batches of ``Page`` documents; a sink
returns from ``upsert`` only once the accepted documents are durably committed, raises
``SinkUnavailable`` when it cannot be reached (the indexer backs off and acks nothing), and
returns a ``Rejected`` for each document it refuses for good (the indexer dead-letters those).

A sink that can be backed up is also ``Backupable``: it writes a consistent copy of itself into
a directory and fills itself back from one (``fleet.backup`` adds the manifest and checksums).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
