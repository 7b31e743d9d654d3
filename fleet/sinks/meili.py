"""The Meilisearch sink: the official (synchronous) ``meilisearch`` client, run off the
event loop; a 413 splits the batch, a document the instance refuses is found by bisection.

Backups ask Meilisearch for a dump (its dumps API: the whole instance, imported only when an
instance starts with ``--import-dump``) and export the index's documents into the backup
directory; a restore re-indexes that export into any running instance.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import meilisearch
import msgspec
from meilisearch.errors import (
    MeilisearchApiError,
    MeilisearchCommunicationError,
    MeilisearchTimeoutError,
)
from meilisearch.models.task import Task

from fleet.errors import BackupInvalid, ConfigError, RestoreFailed, SinkUnavailable
from fleet.messages import Page
from fleet.sinks.base import (
    NO_FILTERS,
    Hit,
    Rejected,
    SearchFilters,
    SearchPage,
    SinkBackup,
    StoredPage,
    url_host,
)
from fleet.urls import redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    "links",
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
    # Not searchable: stored so `GET /api/pages/{id}` shows the page's links.
    links: list[str] = msgspec.field(default_factory=list)


def meili_document(page: Page) -> MeiliDocument:
    """The document sent for ``page``: its host added, the canonical URL defaulting to the URL."""
    return MeiliDocument(
        id=page.id,
        url=page.url,
        canonical_url=page.canonical_url or page.url,
        host=url_host(page.url),
        title=page.title,
        description=page.description,
        headings=list(page.headings),
        text=page.text,
        lang=page.lang,
        via=page.via,
        fetched_at=page.fetched_at,
        links=list(page.links),
    )


_encoder = msgspec.json.Encoder()


EXPORT_FILE = "documents.jsonl"

# Documents per page of the export (each up to ~100 KB of text) and per restore request.
_EXPORT_PAGE = 500
_RESTORE_BATCH = 500
_RESTORE_BATCH_BYTES = 20 * 1024 * 1024


class MeiliSink:
    """Meilisearch through the official synchronous client.

    Every client call runs on one dedicated worker thread: the client mutates a shared
    headers dict per request (Content-Type), so concurrent calls from several threads could
    send a POST without its Content-Type.
    """

    kind = "meilisearch"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        index: str,
        task_timeout_s: float = 60.0,
        request_timeout_s: float = 30.0,
        poll_interval_s: float = 0.05,
        dump_dir: Path | None = None,
        dump_timeout_s: float = 3600.0,
    ) -> None:
        self.url = url
        self.index_uid = index
        self.task_timeout_s = task_timeout_s
        # Meilisearch's --dump-dir as this process sees it (a shared volume), if it does.
        self.dump_dir = dump_dir
        self.dump_timeout_s = dump_timeout_s
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

    def _wait(self, task_uid: int, timeout_s: float | None = None) -> Task:
        return self._client.wait_for_task(
            task_uid,
            timeout_in_ms=max(1, int((timeout_s or self.task_timeout_s) * 1000)),
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
        """Create the index (primary key ``id``) if missing and bring its attributes to fleet's.

        Settings are sent only when they differ: an update re-indexes everything. With
        ``readonly`` nothing is sent. Raises ``ConfigError`` for a refused key or an index fleet
        cannot use (another primary key), ``SinkUnavailable`` when Meilisearch cannot be reached.
        """
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
        """Add the pages (replacing by id) as one task and wait until it has succeeded.

        Documents Meilisearch refuses (invalid, larger than its payload limit) are isolated by
        bisecting the batch and returned as ``Rejected``. Other failures raise ``SinkUnavailable``
        (``ConfigError`` for a refused key or an unusable index).
        """
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

    async def search(
        self, query: str, limit: int, *, offset: int = 0, filters: SearchFilters = NO_FILTERS
    ) -> list[Hit]:
        """Best hits first (``search_page`` without the total)."""
        return (await self.search_page(query, limit, offset=offset, filters=filters)).hits

    async def search_page(
        self, query: str, limit: int, *, offset: int = 0, filters: SearchFilters = NO_FILTERS
    ) -> SearchPage:
        """Best hits first, with Meilisearch's estimated total; no index yet gives no hits."""
        if not query.strip() or limit <= 0:
            return SearchPage([], 0)
        return await self._run(self._search_sync, query, limit, max(0, offset), filters)

    def _search_sync(
        self, query: str, limit: int, offset: int, filters: SearchFilters
    ) -> SearchPage:
        params: dict[str, Any] = {
            "limit": limit,
            "offset": offset,
            "attributesToRetrieve": ["id", "url", "title"],
            # Cropped attributes land in _formatted even when not retrieved, so the
            # full text never crosses the wire.
            "attributesToCrop": ["text"],
            "cropLength": 30,
            "showRankingScore": True,
        }
        conditions = [
            # Values are checked by SearchFilters.of (no quotes or backslashes).
            f'{name} = "{value}"'
            for name, value in (("host", filters.host), ("lang", filters.lang))
            if value is not None
        ]
        if conditions:
            params["filter"] = " AND ".join(conditions)
        try:
            result = self._index.search(query, params)
        except MeilisearchApiError as exc:
            if exc.code == "index_not_found":
                return SearchPage([], 0)
            raise
        hits: list[Hit] = []
        for hit in result.get("hits", []):
            formatted = hit.get("_formatted") or {}
            score = hit.get("_rankingScore")
            hits.append(
                Hit(
                    url=str(hit.get("url", "")),
                    title=str(hit.get("title", "")),
                    snippet=str(formatted.get("text") or ""),
                    id=str(hit.get("id", "")),
                    score=float(score) if isinstance(score, int | float) else None,
                )
            )
        total = result.get("estimatedTotalHits", result.get("totalHits"))
        return SearchPage(hits, int(total) if isinstance(total, int) else None)

    async def get(self, page_id: str) -> StoredPage | None:
        """The stored document with this id, or None (also when there is no index yet)."""
        return await self._run(self._get_sync, page_id)

    def _get_sync(self, page_id: str) -> StoredPage | None:
        try:
            doc = dict(self._index.get_document(page_id))
        except MeilisearchApiError as exc:
            if exc.code in ("document_not_found", "index_not_found"):
                return None
            raise
        url = str(doc.get("url", ""))
        return StoredPage(
            id=str(doc.get("id", page_id)),
            url=url,
            canonical_url=str(doc.get("canonical_url") or url),
            host=str(doc.get("host") or url_host(url)),
            title=str(doc.get("title", "")),
            description=str(doc.get("description", "")),
            headings=[str(h) for h in doc.get("headings") or []],
            text=str(doc.get("text", "")),
            lang=str(doc.get("lang", "")),
            links=[str(link) for link in doc.get("links") or []],
            via=str(doc.get("via", "http")),
            fetched_at=float(doc.get("fetched_at") or 0.0),
        )

    async def count(self) -> int:
        """Number of documents in the index; 0 when the index does not exist yet."""
        return await self._run(self._count_sync)

    def _count_sync(self) -> int:
        try:
            return int(self._index.get_stats().number_of_documents)
        except MeilisearchApiError as exc:
            if exc.code == "index_not_found":
                return 0
            raise

    # -- backup and restore

    async def backup(self, directory: Path) -> SinkBackup:
        """Create a Meilisearch dump, then export the index's documents into ``directory``.

        The dump (``POST /dumps``; the task is waited for, up to ``dump_timeout_s``) stays in
        the instance's dump directory; with ``dump_dir`` set it is also copied into
        ``directory``. The export, ``documents.jsonl``, is what ``restore`` re-indexes.
        Raises ``SinkUnavailable`` when the dump fails, ``ConfigError`` for a key that may not
        create dumps or a ``dump_dir`` without the dump.
        """
        return await self._run(self._backup_sync, directory)

    def _backup_sync(self, directory: Path) -> SinkBackup:
        task = self._wait(self._client.create_dump().task_uid, self.dump_timeout_s)
        self._check_task(task, "dumpCreation")
        dump_uid = str((task.details or {}).get("dumpUid") or "")
        if not dump_uid:
            raise SinkUnavailable(f"Meilisearch dump task {task.uid} succeeded without a dumpUid")
        dump_file = f"{dump_uid}.dump"
        # After the dump: fleet only adds or replaces documents, so the export holds at least
        # every page the dump holds.
        pages = self._export_sync(directory / EXPORT_FILE)
        files = [EXPORT_FILE]
        details: dict[str, Any] = {
            "url": redact_url(self.url),
            "index": self.index_uid,
            "dump_uid": dump_uid,
            "dump_task_uid": task.uid,
            "dump_file": dump_file,
            "dump_location": f"{dump_file} in the instance's dump directory (--dump-dir)",
        }
        if self.dump_dir is not None:
            source = self.dump_dir / dump_file
            if not source.is_file():
                raise ConfigError(
                    f"Meilisearch wrote dump {dump_file}, but it is not in {self.dump_dir}; "
                    "set FLEET_MEILI_DUMP_DIR to Meilisearch's --dump-dir as seen from here, "
                    "or unset it"
                )
            try:
                shutil.copyfile(source, directory / dump_file)
            except OSError as exc:
                raise ConfigError(
                    f"cannot copy the dump {source} into {directory}: {exc}; check the "
                    "permissions and free space, or unset FLEET_MEILI_DUMP_DIR"
                ) from None
            files.append(dump_file)
            details["dump_location"] = str(source)
        return SinkBackup(kind=self.kind, pages=pages, files=tuple(files), details=details)

    def _export_sync(self, target: Path) -> int:
        """Write every document of the index, one JSON object a line; returns how many."""
        count = 0
        with target.open("wb") as fh:
            for document in self._documents({}):
                try:
                    fh.write(_encoder.encode(document) + b"\n")
                except OSError as exc:
                    # Not the client's OSError: the backup directory is the problem here.
                    raise ConfigError(
                        f"cannot write {target}: {exc}; free space or choose another directory"
                    ) from None
                count += 1
        return count

    def _documents(self, parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every document of the index, page by page (offset order is the internal order).

        fleet never deletes, and a replaced document keeps its place, so a page written while
        this runs cannot make another one skipped; a new one may or may not be included.
        """
        offset = 0
        while True:
            try:
                page = self._index.get_documents(
                    {**parameters, "offset": offset, "limit": _EXPORT_PAGE}
                )
            except MeilisearchApiError as exc:
                if exc.code == "index_not_found":
                    return
                raise
            for document in page.results:
                yield dict(document)
            if len(page.results) < _EXPORT_PAGE:
                return
            offset += len(page.results)

    async def restore(self, directory: Path, backup: SinkBackup) -> int:
        """Replace the index's documents with the export in ``directory``, then check them.

        Deletes every document (one task), adds the export in batches (as ``upsert`` does: a
        413 splits a batch), then checks that every exported id is in the index. Raises
        ``RestoreFailed`` for refused or missing documents.
        """
        return await self._run(self._restore_sync, directory / EXPORT_FILE, backup)

    def _restore_sync(self, source: Path, backup: SinkBackup) -> int:
        task = self._wait(self._index.delete_all_documents().task_uid)
        self._check_task(task, "documentDeletion")
        rejected: list[Rejected] = []
        ids: set[str] = set()
        for batch in _export_batches(source):
            ids.update(doc_id for doc_id, _ in batch)
            self._add(batch, rejected)
        target = f"Meilisearch index {self.index_uid!r} at {redact_url(self.url)}"
        if rejected:
            first = rejected[0]
            raise RestoreFailed(
                f"{target} refused {len(rejected)} document(s) of the backup; first "
                f"{first.id}: {first.reason}",
                target=target,
            )
        present = {str(doc.get("id")) for doc in self._documents({"fields": ["id"]})}
        missing = ids - present
        if missing or len(ids) < backup.pages:
            raise RestoreFailed(
                f"{target} lacks {max(len(missing), backup.pages - len(ids))} page(s) of the "
                f"backup after the restore (e.g. {sorted(missing)[:3]})",
                target=target,
            )
        return len(present)

    async def close(self) -> None:
        """Wait for the call under way, then stop the client's thread (a later call starts one)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _export_batches(source: Path) -> Iterator[list[tuple[str, bytes]]]:
    """The export's documents as ``(id, JSON)`` batches, bounded in count and bytes."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    with source.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            raw = line.strip()
            if not raw:
                continue
            try:
                document = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise BackupInvalid(
                    f"{source}:{lineno} is not a JSON document ({exc}); the export is damaged",
                    directory=str(source.parent),
                ) from None
            if not isinstance(document, dict) or "id" not in document:
                raise BackupInvalid(
                    f"{source}:{lineno} is not a document with an id; the export is damaged",
                    directory=str(source.parent),
                )
            if batch and (len(batch) >= _RESTORE_BATCH or size + len(raw) > _RESTORE_BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append((str(document["id"]), raw))
            size += len(raw)
    if batch:
        yield batch


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
