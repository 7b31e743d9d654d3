"""Search sinks: where the indexer writes pages and where `fleet search` reads them.

Sinks know nothing of NATS. The indexer hands them batches of ``Page`` documents; a sink
returns from ``upsert`` only once the accepted documents are durably committed, raises
``SinkUnavailable`` when it cannot be reached (the indexer backs off and acks nothing), and
returns a ``Rejected`` for each document it refuses for good (the indexer dead-letters those).

Two implementations:

* ``SqliteSink``: stdlib sqlite3 + FTS5, one connection owned by one worker thread.
* ``MeiliSink``: the official (synchronous) ``meilisearch`` client, run off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

import meilisearch
import msgspec
from meilisearch.errors import (
    MeilisearchApiError,
    MeilisearchCommunicationError,
    MeilisearchTimeoutError,
)
from meilisearch.models.task import Task

from fleet.errors import ConfigError, SinkUnavailable
from fleet.messages import Page
from fleet.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

SINK_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db or http(s)://host:7700"


@dataclass(frozen=True, slots=True)
class Hit:
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
    async def open(self, *, readonly: bool = False) -> None:
        """Create the schema / index and its settings; idempotent.

        ``readonly`` (for `fleet search`) connects without creating or changing anything, so
        a search-only Meilisearch key is enough.
        """

    async def upsert(self, pages: Sequence[Page]) -> list[Rejected]:
        """Insert or replace pages; return only once the accepted ones are committed."""

    async def search(self, query: str, limit: int) -> list[Hit]:
        """Best hits first; an empty or all-punctuation query gives []."""

    async def count(self) -> int: ...

    async def close(self) -> None: ...


def open_sink(settings: Settings) -> Sink:
    """Build (not open) the sink named by ``settings.sink``."""
    spec = settings.sink.strip()
    if spec.startswith("sqlite:///"):
        raw = spec[len("sqlite:///") :]
        if not raw or raw.endswith("/") or raw == ":memory:":
            raise ConfigError(f"FLEET_SINK={spec!r} has no database file; use one of: {SINK_FORMS}")
        return SqliteSink(Path(raw).expanduser())
    if spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)
        if not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"FLEET_SINK={spec!r} is not a usable URL; use one of: {SINK_FORMS}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"FLEET_SINK={spec!r} has an invalid port") from None
        return MeiliSink(
            spec.rstrip("/"),
            api_key=settings.meili_api_key,
            index=settings.meili_index,
            task_timeout_s=settings.meili_task_timeout_s,
        )
    raise ConfigError(f"FLEET_SINK={spec!r} is not supported; use one of: {SINK_FORMS}")


# --------------------------------------------------------------------------------------
# SQLite


_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    rowid         INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    url           TEXT NOT NULL,
    canonical_url TEXT NOT NULL DEFAULT '',
    title         TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    headings      TEXT NOT NULL DEFAULT '',
    text          TEXT NOT NULL DEFAULT '',
    lang          TEXT NOT NULL DEFAULT '',
    links         TEXT NOT NULL DEFAULT '[]',
    content_hash  TEXT NOT NULL DEFAULT '',
    fetched_at    REAL NOT NULL DEFAULT 0,
    via           TEXT NOT NULL DEFAULT 'http'
);
CREATE VIRTUAL TABLE IF NOT EXISTS pages_fts USING fts5(
    title, description, headings, text,
    content='pages', content_rowid='rowid',
    tokenize='unicode61 remove_diacritics 2',
    -- Per-column but no per-position data: ~half the indexing cost of detail=full, and
    -- all fleet needs (term queries, bm25 with column weights, snippets) still works.
    detail=column
);
CREATE TRIGGER IF NOT EXISTS pages_ai AFTER INSERT ON pages BEGIN
    INSERT INTO pages_fts(rowid, title, description, headings, text)
    VALUES (new.rowid, new.title, new.description, new.headings, new.text);
END;
CREATE TRIGGER IF NOT EXISTS pages_ad AFTER DELETE ON pages BEGIN
    INSERT INTO pages_fts(pages_fts, rowid, title, description, headings, text)
    VALUES ('delete', old.rowid, old.title, old.description, old.headings, old.text);
END;
-- Re-index only when an indexed column really changed: a re-fetch of an unchanged page
-- then costs one row update, not an FTS delete + insert.
CREATE TRIGGER IF NOT EXISTS pages_au AFTER UPDATE OF title, description, headings, text ON pages
WHEN old.title IS NOT new.title OR old.description IS NOT new.description
  OR old.headings IS NOT new.headings OR old.text IS NOT new.text
BEGIN
    INSERT INTO pages_fts(pages_fts, rowid, title, description, headings, text)
    VALUES ('delete', old.rowid, old.title, old.description, old.headings, old.text);
    INSERT INTO pages_fts(rowid, title, description, headings, text)
    VALUES (new.rowid, new.title, new.description, new.headings, new.text);
END;
"""

# The newest fetch wins: a redelivered older result must not overwrite a newer one.
_UPSERT = """
INSERT INTO pages (id, url, canonical_url, title, description, headings, text, lang, links,
                   content_hash, fetched_at, via)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET
    url = excluded.url, canonical_url = excluded.canonical_url, title = excluded.title,
    description = excluded.description, headings = excluded.headings, text = excluded.text,
    lang = excluded.lang, links = excluded.links, content_hash = excluded.content_hash,
    fetched_at = excluded.fetched_at, via = excluded.via
WHERE excluded.fetched_at >= pages.fetched_at
"""

# bm25 weights follow the FTS column order: title, description, headings, text.
_SEARCH = """
SELECT p.url, p.title,
       coalesce(nullif(snippet(pages_fts, 3, '', '', '…', 30), ''), p.description)
FROM pages_fts JOIN pages AS p ON p.rowid = pages_fts.rowid
WHERE pages_fts MATCH ?
ORDER BY bm25(pages_fts, 10.0, 2.0, 5.0, 1.0)
LIMIT ?
"""

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def fts5_query(query: str) -> str | None:
    """Turn free text into a safe FTS5 expression: every term a quoted string, ANDed.

    Quoting makes operators (AND, OR, NOT, NEAR), column filters, ``-``, ``*``, ``^`` and
    stray quotes plain text, so no user input can raise an FTS5 syntax error. Terms with no
    word character are dropped (they would be empty phrases). None means "nothing to search".
    """
    # One quoted term per word, split like the unicode61 tokenizer does: a chunk such as
    # "title:fox" quoted whole would be a multi-token phrase, which detail=column refuses.
    terms = [f'"{word}"' for word in _TOKEN.findall(query)]
    return " ".join(terms) if terms else None


class SqliteSink:
    """SQLite + FTS5. One connection, used only by one dedicated worker thread."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"{self!r} is not open")
        # Not asyncio.to_thread: sqlite3 connections belong to the thread that made them, so
        # every call goes to the same single worker thread.
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args)
        )

    async def open(self, *, readonly: bool = False) -> None:
        if self._executor is not None:
            return
        if readonly and not self.path.exists():
            # A typo in the path must not look like "no results" (or create an empty db).
            raise ConfigError(
                f"no SQLite index at {self.path}; check FLEET_SINK/--sink or run the indexer first"
            )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the directory for the SQLite sink {self.path}: {exc}; "
                "fix FLEET_SINK or the permissions"
            ) from None
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            # timeout= is sqlite3_busy_timeout: wait for a lock instead of failing at once.
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"SQLite sink {self.path} cannot use WAL journaling (got {mode!r}); "
                    "put it on a local filesystem"
                )
            # FULL: a commit survives power loss, so an ack after upsert() is safe.
            conn.execute("PRAGMA synchronous = FULL")
            # FTS5 segment merges re-read index pages: a 64 MiB cache (default 2 MiB) and
            # fewer WAL checkpoints cut indexing CPU by ~10% on 20-150 KB pages.
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute("PRAGMA wal_autocheckpoint = 16384")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ConfigError(
                    f"SQLite sink {self.path} has schema version {version}, newer than this "
                    f"fleet understands ({_SCHEMA_VERSION}); upgrade fleet"
                )
            if version < _SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # also "file is not a database"
            if conn is not None:
                conn.close()
            if "fts5" in str(exc).lower():
                raise ConfigError(
                    "this Python's SQLite has no FTS5; use a Python built with FTS5 or a "
                    "Meilisearch sink (FLEET_SINK=http://host:7700)"
                ) from None
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                raise SinkUnavailable(f"SQLite sink {self.path} is locked: {exc}") from None
            raise ConfigError(
                f"cannot open the SQLite sink {self.path}: {exc}; check FLEET_SINK"
            ) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._conn

    async def upsert(self, pages: Sequence[Page]) -> list[Rejected]:
        if not pages:
            return []
        return await self._run(self._upsert_sync, list(pages))

    def _upsert_sync(self, pages: list[Page]) -> list[Rejected]:
        conn = self._connection()
        rejected: list[Rejected] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for page in pages:
                    if not page.id:
                        rejected.append(Rejected(page.id, "empty document id"))
                        continue
                    try:
                        conn.execute(_UPSERT, _row(page))
                    except (UnicodeEncodeError, sqlite3.DataError, sqlite3.IntegrityError) as exc:
                        # Statement-level failure: SQLite keeps the rest of the transaction.
                        rejected.append(Rejected(page.id, f"sqlite refused the document: {exc}"))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None
        return rejected

    async def search(self, query: str, limit: int) -> list[Hit]:
        expression = fts5_query(query)
        if expression is None or limit <= 0:
            return []
        return await self._run(self._search_sync, expression, limit)

    def _search_sync(self, expression: str, limit: int) -> list[Hit]:
        try:
            rows = self._connection().execute(_SEARCH, (expression, limit)).fetchall()
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None
        return [Hit(url=url, title=title, snippet=snippet or "") for url, title, snippet in rows]

    async def count(self) -> int:
        return await self._run(self._count_sync)

    def _count_sync(self) -> int:
        try:
            return int(self._connection().execute("SELECT count(*) FROM pages").fetchone()[0])
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _split_sql(script: str) -> list[str]:
    """Split the schema into statements; trigger bodies contain ';', hence complete_statement."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def _row(page: Page) -> tuple[Any, ...]:
    return (
        page.id,
        page.url,
        page.canonical_url,
        page.title,
        page.description,
        "\n".join(page.headings),
        page.text,
        page.lang,
        json.dumps(page.links, ensure_ascii=False),
        page.content_hash,
        page.fetched_at,
        page.via,
    )


# --------------------------------------------------------------------------------------
# Meilisearch


SEARCHABLE_ATTRIBUTES = ["title", "headings", "description", "text"]
DISPLAYED_ATTRIBUTES = [
    "id",
    "url",
    "canonical_url",
    "host",
    "title",
    "description",
    "headings",
    "text",
    "lang",
    "via",
    "fetched_at",
]
FILTERABLE_ATTRIBUTES = ["lang", "host", "via"]

# Task error codes that blame a document, not the instance: Meilisearch fails the whole task
# for one bad document, so these are worth bisecting to find it.
_DOCUMENT_ERROR_CODES = frozenset(
    {
        "invalid_document_id",
        "missing_document_id",
        "invalid_document_fields",
        "invalid_document_geo_field",
        "invalid_document_geojson_field",
        "invalid_vectors_type",
        "invalid_vector_dimensions",
        "max_fields_limit_exceeded",
    }
)
_CONFIG_ERROR_CODES = frozenset(
    {
        "index_primary_key_already_exists",
        "index_primary_key_multiple_candidates_found",
        "index_primary_key_no_candidate_found",
        "invalid_index_uid",
        "invalid_index_primary_key",
    }
)


class MeiliDocument(msgspec.Struct, kw_only=True):
    """The shape sent to Meilisearch; ``id`` is the primary key."""

    id: str
    url: str
    canonical_url: str
    host: str
    title: str
    description: str
    headings: list[str]
    text: str
    lang: str
    via: str
    fetched_at: float


def meili_document(page: Page) -> MeiliDocument:
    return MeiliDocument(
        id=page.id,
        url=page.url,
        canonical_url=page.canonical_url or page.url,
        host=(urlsplit(page.url).hostname or "").lower(),
        title=page.title,
        description=page.description,
        headings=list(page.headings),
        text=page.text,
        lang=page.lang,
        via=page.via,
        fetched_at=page.fetched_at,
    )


_encoder = msgspec.json.Encoder()


class MeiliSink:
    """Meilisearch through the official synchronous client.

    Every client call runs on one dedicated worker thread: the client mutates a shared
    headers dict per request (Content-Type), so concurrent calls from several threads could
    send a POST without its Content-Type.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        index: str,
        task_timeout_s: float = 60.0,
        request_timeout_s: float = 30.0,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.url = url
        self.index_uid = index
        self.task_timeout_s = task_timeout_s
        self._poll_interval_ms = max(1, int(poll_interval_s * 1000))
        # The key lives only inside the client; it is never logged or put in a message.
        # requests accepts a float timeout even though the client annotates int.
        self._client = meilisearch.Client(url, api_key, timeout=request_timeout_s)  # type: ignore[arg-type]
        self._index = self._client.index(index)
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"MeiliSink({self.url!r}, index={self.index_uid!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-meili")
        call = functools.partial(self._translate_errors, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _translate_errors(self, fn: Callable[..., T], *args: Any) -> T:
        """Map client exceptions onto the fleet error tree (runs on the worker thread)."""
        try:
            return fn(*args)
        except MeilisearchApiError as exc:
            raise self._api_error(exc) from None
        except MeilisearchTimeoutError as exc:
            raise SinkUnavailable(f"Meilisearch at {self.url} timed out: {_short(exc)}") from None
        except MeilisearchCommunicationError as exc:
            raise SinkUnavailable(
                f"cannot reach Meilisearch at {self.url}: {_short(exc)}"
            ) from None
        except OSError as exc:
            # requests' own exceptions (ChunkedEncodingError, a non-JSON 200 body, ...) are
            # OSErrors the client does not wrap.
            raise SinkUnavailable(f"Meilisearch at {self.url}: {_short(exc)}") from None

    def _api_error(self, exc: MeilisearchApiError) -> Exception:
        status = exc.status_code
        code = exc.code or f"http_{status}"
        if status in (401, 403):
            return ConfigError(
                f"Meilisearch at {self.url} rejected the API key ({code}); set "
                "FLEET_MEILI_API_KEY to the master key or a key allowed on index "
                f"{self.index_uid!r}"
            )
        if code in _CONFIG_ERROR_CODES:
            return ConfigError(
                f"Meilisearch index {self.index_uid!r} cannot be used ({code}): "
                f"{_short(exc.message)}; check FLEET_MEILI_INDEX"
            )
        # 5xx, 429 and anything unexpected: back off and retry rather than dead-letter.
        return SinkUnavailable(
            f"Meilisearch at {self.url} answered HTTP {status} ({code}): {_short(exc.message)}"
        )

    def _wait(self, task_uid: int) -> Task:
        return self._client.wait_for_task(
            task_uid,
            timeout_in_ms=max(1, int(self.task_timeout_s * 1000)),
            interval_in_ms=self._poll_interval_ms,
        )

    def _check_task(self, task: Task, what: str) -> None:
        if task.status == "succeeded":
            return
        error = task.error or {}
        code = str(error.get("code") or task.status)
        message = f"Meilisearch task {task.uid} ({what}) {task.status}: {code}: " + _short(
            str(error.get("message", ""))
        )
        if code in _CONFIG_ERROR_CODES:
            raise ConfigError(message + "; check FLEET_MEILI_INDEX")
        raise SinkUnavailable(message)

    # -- open

    async def open(self, *, readonly: bool = False) -> None:
        if not readonly:
            await self._run(self._open_sync)

    def _open_sync(self) -> None:
        try:
            info = self._client.get_raw_index(self.index_uid)
        except MeilisearchApiError as exc:
            if exc.code != "index_not_found":
                raise
            task = self._wait(
                self._client.create_index(self.index_uid, {"primaryKey": "id"}).task_uid
            )
            # Another indexer may have created it between our GET and POST.
            if task.status != "succeeded" and (task.error or {}).get("code") != (
                "index_already_exists"
            ):
                self._check_task(task, "indexCreation")
            info = self._client.get_raw_index(self.index_uid)
        primary_key = info.get("primaryKey")
        if primary_key not in (None, "id"):
            raise ConfigError(
                f"Meilisearch index {self.index_uid!r} has primary key {primary_key!r}, "
                "fleet needs 'id'; set FLEET_MEILI_INDEX to another index"
            )
        current = self._index.get_settings()
        wanted: dict[str, Any] = {}
        if list(current.get("searchableAttributes") or []) != SEARCHABLE_ATTRIBUTES:
            wanted["searchableAttributes"] = SEARCHABLE_ATTRIBUTES
        if set(current.get("displayedAttributes") or []) != set(DISPLAYED_ATTRIBUTES):
            wanted["displayedAttributes"] = DISPLAYED_ATTRIBUTES
        filterable = {_attribute_name(a) for a in current.get("filterableAttributes") or []}
        if filterable != set(FILTERABLE_ATTRIBUTES):
            wanted["filterableAttributes"] = FILTERABLE_ATTRIBUTES
        # Only send settings that differ: an update re-indexes, so do not do it at every start.
        if wanted:
            log.info("updating Meilisearch settings of %r: %s", self.index_uid, sorted(wanted))
            task = self._wait(self._index.update_settings(wanted).task_uid)
            self._check_task(task, "settingsUpdate")

    # -- upsert

    async def upsert(self, pages: Sequence[Page]) -> list[Rejected]:
        if not pages:
            return []
        return await self._run(self._upsert_sync, list(pages))

    def _upsert_sync(self, pages: list[Page]) -> list[Rejected]:
        rejected: list[Rejected] = []
        encoded: list[tuple[str, bytes]] = []
        for page in pages:
            try:
                encoded.append((page.id, _encoder.encode(meili_document(page))))
            except (UnicodeEncodeError, msgspec.EncodeError) as exc:
                rejected.append(Rejected(page.id, f"cannot encode document as JSON: {exc}"))
        if encoded:
            self._add(encoded, rejected)
        return rejected

    def _add(self, docs: list[tuple[str, bytes]], rejected: list[Rejected]) -> None:
        """Add documents (replace semantics) and wait; isolate bad documents by bisection."""
        body = b"[" + b",".join(doc for _, doc in docs) + b"]"
        try:
            info = self._index.add_documents_json(body, primary_key="id")
        except MeilisearchApiError as exc:
            if exc.status_code != 413 and exc.code != "payload_too_large":
                raise
            if len(docs) == 1:
                rejected.append(
                    Rejected(
                        docs[0][0],
                        f"document of {len(body)} bytes is larger than Meilisearch's payload "
                        f"limit: {_short(exc.message)}",
                    )
                )
                return
            log.debug("payload of %d documents too large, splitting", len(docs))
            self._bisect(docs, rejected)
            return
        task = self._wait(info.task_uid)
        if task.status == "succeeded":
            return
        code = str((task.error or {}).get("code", ""))
        if task.status == "failed" and _is_document_error(code):
            if len(docs) == 1:
                message = str((task.error or {}).get("message", code))
                rejected.append(Rejected(docs[0][0], f"{code}: {message}"))
                return
            log.debug(
                "task %s failed with %s on %d documents, bisecting", task.uid, code, len(docs)
            )
            self._bisect(docs, rejected)
            return
        self._check_task(task, "documentAdditionOrUpdate")

    def _bisect(self, docs: list[tuple[str, bytes]], rejected: list[Rejected]) -> None:
        middle = len(docs) // 2
        self._add(docs[:middle], rejected)
        self._add(docs[middle:], rejected)

    # -- read side

    async def search(self, query: str, limit: int) -> list[Hit]:
        if not query.strip() or limit <= 0:
            return []
        return await self._run(self._search_sync, query, limit)

    def _search_sync(self, query: str, limit: int) -> list[Hit]:
        try:
            result = self._index.search(
                query,
                {
                    "limit": limit,
                    "attributesToRetrieve": ["id", "url", "title"],
                    # Cropped attributes land in _formatted even when not retrieved, so the
                    # full text never crosses the wire.
                    "attributesToCrop": ["text"],
                    "cropLength": 30,
                },
            )
        except MeilisearchApiError as exc:
            if exc.code == "index_not_found":
                return []
            raise
        hits: list[Hit] = []
        for hit in result.get("hits", []):
            formatted = hit.get("_formatted") or {}
            hits.append(
                Hit(
                    url=str(hit.get("url", "")),
                    title=str(hit.get("title", "")),
                    snippet=str(formatted.get("text") or ""),
                )
            )
        return hits

    async def count(self) -> int:
        return await self._run(self._count_sync)

    def _count_sync(self) -> int:
        try:
            return int(self._index.get_stats().number_of_documents)
        except MeilisearchApiError as exc:
            if exc.code == "index_not_found":
                return 0
            raise

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _is_document_error(code: str) -> bool:
    return code in _DOCUMENT_ERROR_CODES or code.startswith("invalid_document_")


def _attribute_name(value: Any) -> str:
    # Meilisearch >= 1.14 may report filterable attributes as objects with patterns.
    if isinstance(value, dict):
        patterns = value.get("attributePatterns") or []
        return str(patterns[0]) if patterns else ""
    return str(value)


def _short(value: object, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
