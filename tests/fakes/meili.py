"""A fake Meilisearch: the HTTP API the ``meilisearch`` Python client speaks, in one process.

The real binary cannot be installed where the tests run, so this double answers with the
shapes Meilisearch 1.x uses (task objects, summarized tasks, error objects with
message/code/type/link, RFC 3339 timestamps with nanoseconds) and keeps its semantics where
fleet depends on them:

* writes are asynchronous: a write answers 202 with an enqueued task, and a background
  worker processes tasks one at a time, in uid order, after ``task_delay_s``; clients really
  have to poll ``GET /tasks/{uid}``;
* a document addition is atomic: one document with an invalid or missing id fails the whole
  task (``invalid_document_id`` / ``missing_document_id``) and nothing is written;
* bodies larger than ``max_payload_bytes`` get 413 ``payload_too_large``;
* with a master key, every route but ``/health`` needs ``Authorization: Bearer <key>``
  (401 ``missing_authorization_header``, 403 ``invalid_api_key``);
* ``POST /dumps`` enqueues a ``dumpCreation`` task (``details.dumpUid`` null until it
  succeeds); processing it writes ``<dumpUid>.dump`` into ``dump_dir`` (``--dump-dir``,
  default ``dumps/``) as Meilisearch does: a gzipped tar in the v6 layout (``metadata.json``,
  ``instance_uid.uuid``, ``keys.jsonl``, ``tasks/queue.jsonl``, ``batches/queue.jsonl``,
  ``indexes/<uid>/{metadata.json,settings.json,documents.jsonl}``, ...). Like Meilisearch, a
  dump is imported only at start-up (``import_dump=`` / ``--import-dump``), into an empty
  instance. The fake's task lines are its own task objects (plus the payload of a task not
  yet processed), not Meilisearch's internal task format, and there are no API keys to dump.

Search is deliberately simple: tokens are lowercased words without diacritics, the last
query word matches as a prefix, the ``last`` matching strategy drops words from the end, and
hits are ranked by matched words, then best attribute (searchableAttributes order), then
number of occurrences. No typo tolerance, proximity or synonyms. Filters support ``=`` and
``!=`` joined by AND/OR.

Test knobs (Python API, or ``/_fake/...`` routes when run as a process):
``fail_next(n, status)``, ``set_down(flag)``, ``pause_tasks()``/``resume_tasks()``,
``fail_next_tasks(n, code)``, ``max_payload_bytes``, counters such as
``document_add_requests``. ``start_in_thread()``/``stop_thread()`` run it on its own event
loop so synchronous clients can call it from anywhere; stop and start again on the same port
to simulate an outage (state survives, like a real instance with a disk).

Run it standalone: ``python -m tests.fakes.meili --port 7700 --master-key KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import csv
import io
import json
import os
import re
import socket
import tarfile
import tempfile
import threading
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

PKG_VERSION = "1.15.2"
ERROR_LINK = "https://docs.meilisearch.com/errors#"
DEFAULT_MAX_PAYLOAD = 100 * 1024 * 1024
ACCEPTED_DOCUMENT_TYPES = "`application/json`, `application/x-ndjson`, `text/csv`"

_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INDEX_UID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_WORD_RE = re.compile(r"[^\W_]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Json = dict[str, Any]


# --------------------------------------------------------------------------------------
# errors


class ApiError(Exception):
    """An error answered with Meilisearch's error object."""

    def __init__(self, status: int, code: str, message: str, type_: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_

    def body(self) -> Json:
        return error_object(self.code, self.message, self.type)

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)


def error_object(code: str, message: str, type_: str = "invalid_request") -> Json:
    return {"message": message, "code": code, "type": type_, "link": ERROR_LINK + code}


class TaskFailure(Exception):
    """A task that fails while processing: its error object goes into the task."""

    def __init__(self, code: str, message: str, type_: str = "invalid_request"):
        super().__init__(message)
        self.error = error_object(code, message, type_)


def _index_not_found(uid: str) -> ApiError:
    return ApiError(404, "index_not_found", f"Index `{uid}` not found.")


# --------------------------------------------------------------------------------------
# time formats


def rfc3339(ns: int) -> str:
    """Meilisearch prints nanoseconds: 2025-08-28T16:20:26.170638547Z."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time as ``rfc3339`` prints it."""
    stamp, _, fraction = text.removesuffix("Z").partition(".")
    seconds = int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def dump_uid(ns: int) -> str:
    """Meilisearch names a dump after its start: 20250828-162026170 (milliseconds last)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}{nanos // 1_000_000:03d}"


def iso_duration(ns: int) -> str:
    text = f"{ns / 1e9:.9f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    return f"PT{text}S"


# --------------------------------------------------------------------------------------
# state


DEFAULT_SETTINGS: Json = {
    "displayedAttributes": ["*"],
    "searchableAttributes": ["*"],
    "filterableAttributes": [],
    "sortableAttributes": [],
    "rankingRules": ["words", "typo", "proximity", "attribute", "sort", "exactness"],
    "stopWords": [],
    "nonSeparatorTokens": [],
    "separatorTokens": [],
    "dictionary": [],
    "synonyms": {},
    "distinctAttribute": None,
    "proximityPrecision": "byWord",
    "typoTolerance": {
        "enabled": True,
        "minWordSizeForTypos": {"oneTypo": 5, "twoTypos": 9},
        "disableOnWords": [],
        "disableOnAttributes": [],
        "disableOnNumbers": False,
    },
    "faceting": {"maxValuesPerFacet": 100, "sortFacetValuesBy": {"*": "alpha"}},
    "pagination": {"maxTotalHits": 1000},
    "embedders": {},
    "searchCutoffMs": None,
    "localizedAttributes": None,
    "facetSearch": True,
    "prefixSearch": "indexingTime",
}

# Settings sub-routes: URL segment -> (setting name, HTTP method used to update it).
SETTING_ROUTES: dict[str, tuple[str, str]] = {
    "displayed-attributes": ("displayedAttributes", "PUT"),
    "searchable-attributes": ("searchableAttributes", "PUT"),
    "filterable-attributes": ("filterableAttributes", "PUT"),
    "sortable-attributes": ("sortableAttributes", "PUT"),
    "ranking-rules": ("rankingRules", "PUT"),
    "stop-words": ("stopWords", "PUT"),
    "non-separator-tokens": ("nonSeparatorTokens", "PUT"),
    "separator-tokens": ("separatorTokens", "PUT"),
    "dictionary": ("dictionary", "PUT"),
    "synonyms": ("synonyms", "PUT"),
    "distinct-attribute": ("distinctAttribute", "PUT"),
    "proximity-precision": ("proximityPrecision", "PUT"),
    "typo-tolerance": ("typoTolerance", "PATCH"),
    "faceting": ("faceting", "PATCH"),
    "pagination": ("pagination", "PATCH"),
    "embedders": ("embedders", "PATCH"),
    "search-cutoff-ms": ("searchCutoffMs", "PUT"),
    "localized-attributes": ("localizedAttributes", "PUT"),
    "facet-search": ("facetSearch", "PUT"),
    "prefix-search": ("prefixSearch", "PUT"),
}

_LIST_OF_STRINGS = {
    "displayedAttributes",
    "searchableAttributes",
    "sortableAttributes",
    "rankingRules",
    "stopWords",
    "nonSeparatorTokens",
    "separatorTokens",
    "dictionary",
}
_OBJECT_SETTINGS = {"typoTolerance", "faceting", "pagination", "embedders", "synonyms"}


@dataclass
class FakeIndex:
    uid: str
    primary_key: str | None
    created_ns: int
    updated_ns: int
    # Keyed by the external id as a string (1 and "1" are the same document, as in
    # Meilisearch); dict order is the internal document order.
    documents: dict[str, Json] = field(default_factory=dict)
    settings: Json = field(default_factory=lambda: copy.deepcopy(DEFAULT_SETTINGS))
    field_order: list[str] = field(default_factory=list)

    def to_json(self) -> Json:
        return {
            "uid": self.uid,
            "createdAt": rfc3339(self.created_ns),
            "updatedAt": rfc3339(self.updated_ns),
            "primaryKey": self.primary_key,
        }

    def note_fields(self, document: Json) -> None:
        for name in document:
            if name not in self.field_order:
                self.field_order.append(name)

    def displayed(self) -> list[str]:
        shown = self.settings["displayedAttributes"]
        return list(self.field_order) if "*" in shown else list(shown)

    def searchable(self) -> list[str]:
        wanted = self.settings["searchableAttributes"]
        return list(self.field_order) if "*" in wanted else list(wanted)

    def filterable(self) -> set[str]:
        names: set[str] = set()
        for item in self.settings["filterableAttributes"]:
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, dict):
                names.update(str(p) for p in item.get("attributePatterns", []))
        return names


@dataclass
class FakeTask:
    uid: int
    index_uid: str | None
    type: str
    details: Json
    enqueued_ns: int
    payload: Any = None
    status: str = "enqueued"
    started_ns: int | None = None
    finished_ns: int | None = None
    error: Json | None = None

    def to_json(self) -> Json:
        duration = None
        if self.started_ns is not None and self.finished_ns is not None:
            duration = iso_duration(self.finished_ns - self.started_ns)
        return {
            "uid": self.uid,
            "batchUid": self.uid if self.started_ns is not None else None,
            "indexUid": self.index_uid,
            "status": self.status,
            "type": self.type,
            "canceledBy": None,
            "details": copy.deepcopy(self.details),
            "error": copy.deepcopy(self.error),
            "duration": duration,
            "enqueuedAt": rfc3339(self.enqueued_ns),
            "startedAt": rfc3339(self.started_ns) if self.started_ns is not None else None,
            "finishedAt": rfc3339(self.finished_ns) if self.finished_ns is not None else None,
        }

    def summary(self) -> Json:
        return {
            "taskUid": self.uid,
            "indexUid": self.index_uid,
            "status": self.status,
            "type": self.type,
            "enqueuedAt": rfc3339(self.enqueued_ns),
        }


# --------------------------------------------------------------------------------------
# the fake


def _check_index_uid(uid: object) -> None:
    """Meilisearch's index uid rule, for both the URL path and index creation."""
    if not isinstance(uid, str) or not _INDEX_UID_RE.match(uid) or len(uid.encode()) > 400:
        raise ApiError(
            400,
            "invalid_index_uid",
            f"`{uid}` is not a valid index uid. Index uid can be an integer or a string "
            "containing only alphanumeric characters, hyphens (-) and underscores (_), "
            "and can not be more than 400 bytes.",
        )


class FakeMeili:
    def __init__(
        self,
        *,
        master_key: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        task_delay_s: float = 0.005,
        dump_dir: str | Path | None = None,
        import_dump: str | Path | None = None,
    ) -> None:
        self.master_key = master_key or None
        self.max_payload_bytes = max_payload_bytes
        self.task_delay_s = task_delay_s
        # Meilisearch's default is ./dumps; a stand-in must not write into the caller's cwd.
        self.dump_dir = (
            Path(dump_dir)
            if dump_dir is not None
            else Path(tempfile.mkdtemp(prefix="fake-meili-dumps-"))
        )
        self.instance_uid = uuid.uuid4()
        self.indexes: dict[str, FakeIndex] = {}
        self.tasks: list[FakeTask] = []
        # Counters a test can assert on.
        self.requests_total = 0
        self.document_add_requests = 0
        self.search_requests = 0
        # One lock for state touched both by the server thread and by a test thread.
        self._lock = threading.RLock()
        self._fail_next: list[int] = []
        self._fail_tasks: list[tuple[str, str]] = []
        self._down = False
        self._tasks_paused = threading.Event()
        self._wakeup: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.host = "127.0.0.1"
        self.port = 0
        if import_dump is not None:
            self._import_dump(Path(import_dump))

    # -- knobs -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next ``count`` API requests answer ``status`` (like a proxy with no backend)."""
        with self._lock:
            self._fail_next.extend([status] * count)

    def set_down(self, down: bool = True) -> None:
        """While down, every API request answers 503; the listener stays up."""
        with self._lock:
            self._down = down

    def fail_next_tasks(self, count: int, code: str = "internal", message: str = "") -> None:
        """The next ``count`` processed tasks fail with ``code`` instead of running."""
        text = message or "An internal error has occurred. `fake failure`."
        with self._lock:
            self._fail_tasks.extend([(code, text)] * count)

    def pause_tasks(self) -> None:
        """Tasks stay enqueued until resume_tasks() (to exercise client-side timeouts)."""
        self._tasks_paused.set()

    def resume_tasks(self) -> None:
        self._tasks_paused.clear()
        self._wake()

    def reset(self) -> None:
        with self._lock:
            self.indexes.clear()
            self.tasks.clear()
            self._fail_next.clear()
            self._fail_tasks.clear()
            self._down = False
            self.requests_total = self.document_add_requests = self.search_requests = 0

    # -- inspection (safe from any thread) --------------------------------------------

    def documents(self, index_uid: str) -> list[Json]:
        with self._lock:
            index = self.indexes.get(index_uid)
            return copy.deepcopy(list(index.documents.values())) if index else []

    def task_list(self) -> list[Json]:
        with self._lock:
            return [task.to_json() for task in self.tasks]

    def tasks_of_type(self, task_type: str) -> list[Json]:
        return [task for task in self.task_list() if task["type"] == task_type]

    # -- serving -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        # Payload limits are ours to enforce (with Meilisearch's error), not aiohttp's.
        app = web.Application(client_max_size=2**40, middlewares=[self._middleware])
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        r = app.router
        r.add_get("/health", self._health)
        r.add_get("/version", self._version)
        r.add_get("/stats", self._stats)
        r.add_get("/indexes", self._list_indexes)
        r.add_post("/indexes", self._create_index)
        r.add_get("/indexes/{uid}", self._get_index)
        r.add_patch("/indexes/{uid}", self._update_index)
        r.add_delete("/indexes/{uid}", self._delete_index)
        r.add_get("/indexes/{uid}/stats", self._index_stats)
        r.add_get("/indexes/{uid}/settings", self._get_settings)
        r.add_patch("/indexes/{uid}/settings", self._patch_settings)
        r.add_delete("/indexes/{uid}/settings", self._reset_settings)
        r.add_get("/indexes/{uid}/settings/{setting}", self._get_setting)
        r.add_put("/indexes/{uid}/settings/{setting}", self._update_setting)
        r.add_patch("/indexes/{uid}/settings/{setting}", self._update_setting)
        r.add_delete("/indexes/{uid}/settings/{setting}", self._reset_setting)
        r.add_get("/indexes/{uid}/documents", self._get_documents)
        r.add_post("/indexes/{uid}/documents", self._add_documents)
        r.add_put("/indexes/{uid}/documents", self._add_documents)
        r.add_delete("/indexes/{uid}/documents", self._delete_all_documents)
        r.add_post("/indexes/{uid}/documents/fetch", self._fetch_documents)
        r.add_post("/indexes/{uid}/documents/delete-batch", self._delete_documents_batch)
        r.add_get("/indexes/{uid}/documents/{id}", self._get_document)
        r.add_delete("/indexes/{uid}/documents/{id}", self._delete_document)
        r.add_post("/indexes/{uid}/search", self._search_post)
        r.add_get("/indexes/{uid}/search", self._search_get)
        r.add_post("/dumps", self._create_dump)
        r.add_get("/tasks", self._list_tasks)
        r.add_get("/tasks/{uid}", self._get_task)
        r.add_get("/_fake/state", self._fake_state)
        r.add_post("/_fake/fail", self._fake_fail)
        r.add_post("/_fake/down", self._fake_down)
        r.add_post("/_fake/tasks", self._fake_tasks)
        r.add_post("/_fake/max-payload", self._fake_max_payload)
        r.add_post("/_fake/reset", self._fake_reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on the running loop; port 0 picks a free port. Returns the base URL."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        # Reuse the port right after a stop, to simulate a restart on the same address.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """Serve from a private thread + loop. ``port=None`` reuses the last port (or picks)."""
        if self._thread is not None:
            raise RuntimeError("fake Meilisearch already running")
        chosen = self.port if port is None else port
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start(host, chosen))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-meili", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.url

    def stop_thread(self) -> None:
        """Stop listening (connections are refused until start_in_thread() again)."""
        if self._thread is None or self._thread_loop is None:
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(10)
        self._thread = None
        self._thread_loop = None

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        url = self.start_in_thread()
        try:
            yield url
        finally:
            self.stop_thread()

    async def _on_startup(self, app: web.Application) -> None:
        self._wakeup = asyncio.Event()
        with self._lock:
            # A task caught mid-processing by a stop is processed again, like a crash.
            for task in self.tasks:
                if task.status == "processing":
                    task.status, task.started_ns = "enqueued", None
        self._worker = asyncio.create_task(self._process_tasks())
        self._wakeup.set()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._wakeup = None

    def _wake(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if wakeup is None or loop is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # asyncio.Event is not thread-safe: from a test thread, hop onto the server's loop.
        if running is loop:
            wakeup.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    # -- middleware --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            return await handler(request)
        with self._lock:
            self.requests_total += 1
            injected = self._fail_next.pop(0) if self._fail_next else None
            down = self._down
        if injected is not None:
            return web.Response(status=injected, text=f"fake meilisearch: injected {injected}")
        if down:
            return web.Response(status=503, text="fake meilisearch: down")
        try:
            if request.path != "/health" and self.master_key is not None:
                self._check_auth(request)
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer":
            raise ApiError(
                401,
                "missing_authorization_header",
                "The Authorization header is missing. It must use the bearer authorization method.",
                "auth",
            )
        if token.strip() != self.master_key:
            raise ApiError(403, "invalid_api_key", "The provided API key is invalid.", "auth")

    # -- request helpers ---------------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes:
        data = await request.read()
        if len(data) > self.max_payload_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                "The provided payload reached the size limit. The maximum accepted payload "
                f"size is {_human_bytes(self.max_payload_bytes)}.",
            )
        return data

    async def _json(self, request: web.Request, *, required: bool = True) -> Any:
        data = await self._body(request)
        content_type = request.headers.get("Content-Type")
        if not data.strip():
            if not required:
                return None
            raise ApiError(400, "missing_payload", "A json payload is missing.")
        if content_type is None:
            raise ApiError(
                415,
                "missing_content_type",
                "A Content-Type header is missing. Accepted values for the Content-Type "
                "header are: `application/json`",
            )
        if request.content_type != "application/json":
            raise ApiError(
                415,
                "invalid_content_type",
                f"The Content-Type `{content_type}` is invalid. Accepted values for the "
                "Content-Type header are: `application/json`",
            )
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(
                400, "bad_request", f"The json payload provided is malformed. `{exc}`."
            ) from None

    def _uid(self, request: web.Request) -> str:
        uid = request.match_info["uid"]
        _check_index_uid(uid)
        return uid

    def _index(self, request: web.Request) -> FakeIndex:
        uid = self._uid(request)
        index = self.indexes.get(uid)
        if index is None:
            raise _index_not_found(uid)
        return index

    def _enqueue(
        self, index_uid: str | None, task_type: str, details: Json, payload: Any = None
    ) -> web.Response:
        with self._lock:
            task = FakeTask(
                uid=len(self.tasks),
                index_uid=index_uid,
                type=task_type,
                details=details,
                enqueued_ns=time.time_ns(),
                payload=payload,
            )
            self.tasks.append(task)
        self._wake()
        return web.json_response(task.summary(), status=202)

    # -- routes: instance --------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "available"})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "commitSha": "0000000000000000000000000000000000000000",
                "commitDate": "2025-01-01T00:00:00Z",
                "pkgVersion": PKG_VERSION,
            }
        )

    async def _stats(self, request: web.Request) -> web.Response:
        with self._lock:
            indexes = {uid: self._index_stats_json(index) for uid, index in self.indexes.items()}
            finished = [t.finished_ns for t in self.tasks if t.finished_ns is not None]
        size = sum(s["rawDocumentDbSize"] for s in indexes.values())
        return web.json_response(
            {
                "databaseSize": size,
                "usedDatabaseSize": size,
                "lastUpdate": rfc3339(max(finished)) if finished else None,
                "indexes": indexes,
            }
        )

    # -- routes: indexes ---------------------------------------------------------------

    async def _list_indexes(self, request: web.Request) -> web.Response:
        offset = _query_int(request, "offset", 0)
        limit = _query_int(request, "limit", 20)
        with self._lock:
            ordered = [self.indexes[uid].to_json() for uid in sorted(self.indexes)]
        return web.json_response(
            {
                "results": ordered[offset : offset + limit],
                "offset": offset,
                "limit": limit,
                "total": len(ordered),
            }
        )

    async def _create_index(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "Invalid value type: expected an object.")
        uid = body.get("uid")
        if uid is None:
            raise ApiError(400, "missing_index_uid", "Missing field `uid`")
        _check_index_uid(uid)
        primary_key = body.get("primaryKey")
        if primary_key is not None and not isinstance(primary_key, str):
            raise ApiError(400, "invalid_index_primary_key", "Invalid value type at `.primaryKey`.")
        unknown = set(body) - {"uid", "primaryKey"}
        if unknown:
            raise ApiError(
                400,
                "bad_request",
                f"Unknown field `{sorted(unknown)[0]}`: expected one of `uid`, `primaryKey`",
            )
        return self._enqueue(uid, "indexCreation", {"primaryKey": primary_key}, primary_key)

    async def _get_index(self, request: web.Request) -> web.Response:
        return web.json_response(self._index(request).to_json())

    async def _update_index(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        body = await self._json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "Invalid value type: expected an object.")
        primary_key = body.get("primaryKey")
        return self._enqueue(uid, "indexUpdate", {"primaryKey": primary_key}, primary_key)

    async def _delete_index(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        return self._enqueue(uid, "indexDeletion", {"deletedDocuments": None})

    async def _index_stats(self, request: web.Request) -> web.Response:
        index = self._index(request)
        with self._lock:
            return web.json_response(self._index_stats_json(index))

    def _index_stats_json(self, index: FakeIndex) -> Json:
        distribution: dict[str, int] = {}
        size = 0
        for document in index.documents.values():
            size += len(json.dumps(document))
            for name in document:
                distribution[name] = distribution.get(name, 0) + 1
        count = len(index.documents)
        indexing = any(
            t.index_uid == index.uid and t.status in ("enqueued", "processing") for t in self.tasks
        )
        return {
            "numberOfDocuments": count,
            "rawDocumentDbSize": size,
            "avgDocumentSize": size // count if count else 0,
            "isIndexing": indexing,
            "numberOfEmbeddings": 0,
            "numberOfEmbeddedDocuments": 0,
            "fieldDistribution": distribution,
        }

    # -- routes: settings --------------------------------------------------------------

    async def _get_settings(self, request: web.Request) -> web.Response:
        index = self._index(request)
        with self._lock:
            return web.json_response(copy.deepcopy(index.settings))

    async def _patch_settings(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        body = await self._json(request)
        if not isinstance(body, dict):
            raise ApiError(
                400, "bad_request", "Invalid value type: expected an object, but found another."
            )
        for name, value in body.items():
            _validate_setting(name, value, prefix=".")
        return self._enqueue(uid, "settingsUpdate", copy.deepcopy(body), body)

    async def _reset_settings(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        body = dict.fromkeys(DEFAULT_SETTINGS)
        return self._enqueue(uid, "settingsUpdate", {}, body)

    def _setting_name(self, request: web.Request) -> tuple[str, str]:
        route = SETTING_ROUTES.get(request.match_info["setting"])
        if route is None:
            raise web.HTTPNotFound()
        return route

    async def _get_setting(self, request: web.Request) -> web.Response:
        name, _ = self._setting_name(request)
        index = self._index(request)
        with self._lock:
            return web.json_response(copy.deepcopy(index.settings[name]))

    async def _update_setting(self, request: web.Request) -> web.Response:
        name, method = self._setting_name(request)
        if request.method != method:
            raise web.HTTPMethodNotAllowed(request.method, [method, "GET", "DELETE"])
        uid = self._uid(request)
        value = await self._json(request)
        _validate_setting(name, value, prefix="")
        return self._enqueue(uid, "settingsUpdate", {name: copy.deepcopy(value)}, {name: value})

    async def _reset_setting(self, request: web.Request) -> web.Response:
        name, _ = self._setting_name(request)
        uid = self._uid(request)
        return self._enqueue(uid, "settingsUpdate", {name: None}, {name: None})

    # -- routes: documents -------------------------------------------------------------

    async def _add_documents(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        data = await self._body(request)
        documents = _parse_documents(data, request.headers.get("Content-Type"))
        primary_key = request.query.get("primaryKey") or None
        with self._lock:
            self.document_add_requests += 1
        replace = request.method == "POST"
        details = {"receivedDocuments": len(documents), "indexedDocuments": None}
        return self._enqueue(
            uid, "documentAdditionOrUpdate", details, (documents, primary_key, replace)
        )

    async def _get_documents(self, request: web.Request) -> web.Response:
        index = self._index(request)
        fields = request.query.get("fields")
        return web.json_response(
            self._documents_page(
                index,
                offset=_query_int(request, "offset", 0),
                limit=_query_int(request, "limit", 20),
                fields=fields.split(",") if fields else None,
                ids=None,
            )
        )

    async def _fetch_documents(self, request: web.Request) -> web.Response:
        index = self._index(request)
        body = await self._json(request, required=False) or {}
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "Invalid value type: expected an object.")
        ids = body.get("ids")
        offset, limit = body.get("offset", 0), body.get("limit", 20)
        for name, value in (("offset", offset), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ApiError(
                    400,
                    f"invalid_document_{name}",
                    f"Invalid value type at `.{name}`: expected a positive integer, but found "
                    f"{_json_kind(value)}: `{json.dumps(value)}`",
                )
        return web.json_response(
            self._documents_page(
                index,
                offset=offset,
                limit=limit,
                fields=body.get("fields"),
                ids=[str(i) for i in ids] if ids is not None else None,
            )
        )

    def _documents_page(
        self,
        index: FakeIndex,
        *,
        offset: int,
        limit: int,
        fields: list[str] | None,
        ids: list[str] | None,
    ) -> Json:
        with self._lock:
            documents = list(index.documents.items())
            displayed = index.displayed()
        if ids is not None:
            wanted = set(ids)
            documents = [item for item in documents if item[0] in wanted]
        shown = [_project(doc, displayed, fields) for _, doc in documents]
        return {
            "results": shown[offset : offset + limit],
            "offset": offset,
            "limit": limit,
            "total": len(shown),
        }

    async def _get_document(self, request: web.Request) -> web.Response:
        index = self._index(request)
        doc_id = request.match_info["id"]
        with self._lock:
            document = index.documents.get(doc_id)
            displayed = index.displayed()
        if document is None:
            raise ApiError(404, "document_not_found", f"Document `{doc_id}` not found.")
        fields = request.query.get("fields")
        return web.json_response(
            _project(document, displayed, fields.split(",") if fields else None)
        )

    async def _delete_document(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        doc_id = request.match_info["id"]
        details = {"providedIds": 1, "deletedDocuments": None, "originalFilter": None}
        return self._enqueue(uid, "documentDeletion", details, [doc_id])

    async def _delete_documents_batch(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        body = await self._json(request)
        if not isinstance(body, list):
            raise ApiError(
                400, "bad_request", "Invalid value type: expected an array of document ids."
            )
        ids = [str(i) for i in body]
        details = {"providedIds": len(ids), "deletedDocuments": None, "originalFilter": None}
        return self._enqueue(uid, "documentDeletion", details, ids)

    async def _delete_all_documents(self, request: web.Request) -> web.Response:
        uid = self._uid(request)
        details = {"providedIds": 0, "deletedDocuments": None, "originalFilter": None}
        return self._enqueue(uid, "documentDeletion", details, None)

    # -- routes: search ----------------------------------------------------------------

    async def _search_post(self, request: web.Request) -> web.Response:
        index = self._index(request)
        body = await self._json(request, required=False)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ApiError(
                400, "bad_request", "Invalid value type: expected an object, but found another."
            )
        return web.json_response(self._search(index, body))

    async def _search_get(self, request: web.Request) -> web.Response:
        index = self._index(request)
        body: Json = {}
        for key, value in request.query.items():
            if key in ("limit", "offset", "cropLength", "page", "hitsPerPage"):
                body[key] = _query_int(request, key, 0)
            elif key in ("attributesToRetrieve", "attributesToCrop", "attributesToHighlight"):
                body[key] = value.split(",")
            elif key in ("showRankingScore", "showMatchesPosition"):
                body[key] = value.lower() == "true"
            else:
                body[key] = value
        return web.json_response(self._search(index, body))

    def _search(self, index: FakeIndex, body: Json) -> Json:
        started = time.perf_counter()
        with self._lock:
            self.search_requests += 1
            documents = list(index.documents.values())
            searchable = index.searchable()
            displayed = index.displayed()
            filterable = index.filterable()
        params = _search_params(body)
        documents = _apply_filter(documents, params["filter"], filterable)
        terms = _tokens(params["q"])[:10]
        prefix_last = bool(params["q"]) and not params["q"][-1].isspace()
        if not terms:
            ranked = [(1.0, doc) for doc in documents]
        else:
            ranked = _rank(documents, terms, prefix_last, searchable, params["matchingStrategy"])
        total = len(ranked)
        if params["page"] is not None or params["hitsPerPage"] is not None:
            hits_per_page = params["hitsPerPage"] if params["hitsPerPage"] is not None else 20
            page = params["page"] if params["page"] is not None else 1
            start = (page - 1) * hits_per_page if page > 0 else total
            window = ranked[start : start + hits_per_page] if page > 0 else []
        else:
            window = ranked[params["offset"] : params["offset"] + params["limit"]]
        hits = [_hit(doc, score, params, terms, prefix_last, displayed) for score, doc in window]
        result: Json = {"hits": hits, "query": params["q"]}
        result["processingTimeMs"] = int((time.perf_counter() - started) * 1000)
        if params["page"] is not None or params["hitsPerPage"] is not None:
            hits_per_page = params["hitsPerPage"] if params["hitsPerPage"] is not None else 20
            result.update(
                {
                    "hitsPerPage": hits_per_page,
                    "page": params["page"] if params["page"] is not None else 1,
                    "totalPages": -(-total // hits_per_page) if hits_per_page else 0,
                    "totalHits": total,
                }
            )
        else:
            result.update(
                {"limit": params["limit"], "offset": params["offset"], "estimatedTotalHits": total}
            )
        return result

    # -- routes: dumps -----------------------------------------------------------------

    async def _create_dump(self, request: web.Request) -> web.Response:
        return self._enqueue(None, "dumpCreation", {"dumpUid": None})

    # -- routes: tasks -----------------------------------------------------------------

    async def _get_task(self, request: web.Request) -> web.Response:
        raw = request.match_info["uid"]
        if not raw.isdigit():
            raise ApiError(
                400,
                "invalid_task_uids",
                f"Invalid value in parameter `taskUid`: could not parse `{raw}` as a positive "
                "integer",
            )
        uid = int(raw)
        with self._lock:
            if uid >= len(self.tasks):
                raise ApiError(404, "task_not_found", f"Task `{uid}` not found.")
            return web.json_response(self.tasks[uid].to_json())

    async def _list_tasks(self, request: web.Request) -> web.Response:
        query = request.query
        limit = _query_int(request, "limit", 20)
        start = _query_int(request, "from", -1) if "from" in query else None
        reverse = query.get("reverse", "false").lower() == "true"

        def listed(name: str) -> set[str] | None:
            raw = query.get(name)
            if raw is None or raw.strip() in ("", "*"):
                return None
            return {part.strip() for part in raw.split(",") if part.strip()}

        uids, statuses = listed("uids"), listed("statuses")
        types, index_uids = listed("types"), listed("indexUids")
        valid_statuses = {"enqueued", "processing", "succeeded", "failed", "canceled"}
        if statuses is not None and not statuses <= valid_statuses:
            bad = sorted(statuses - valid_statuses)[0]
            raise ApiError(
                400,
                "invalid_task_statuses",
                f"Invalid value in parameter `statuses`: `{bad}` is not a valid task status. "
                "Available statuses are `enqueued`, `processing`, `succeeded`, `failed`, "
                "`canceled`.",
            )
        with self._lock:
            matching = [
                task
                for task in self.tasks
                if (uids is None or str(task.uid) in uids)
                and (statuses is None or task.status in statuses)
                and (types is None or task.type in types)
                and (index_uids is None or (task.index_uid or "") in index_uids)
            ]
            if not reverse:
                matching.reverse()
            total = len(matching)
            if start is not None:
                matching = [t for t in matching if (t.uid >= start if reverse else t.uid <= start)]
            page = [task.to_json() for task in matching[:limit]]
            following = matching[limit].uid if len(matching) > limit else None
        return web.json_response(
            {
                "results": page,
                "total": total,
                "limit": limit,
                "from": page[0]["uid"] if page else None,
                "next": following,
            }
        )

    # -- routes: fake admin ------------------------------------------------------------

    async def _fake_state(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(
                {
                    "requests": self.requests_total,
                    "documentAddRequests": self.document_add_requests,
                    "searchRequests": self.search_requests,
                    "tasks": len(self.tasks),
                    "pendingFailures": len(self._fail_next),
                    "down": self._down,
                    "tasksPaused": self._tasks_paused.is_set(),
                    "maxPayloadBytes": self.max_payload_bytes,
                    "indexes": {uid: len(i.documents) for uid, i in self.indexes.items()},
                }
            )

    async def _fake_fail(self, request: web.Request) -> web.Response:
        self.fail_next(_query_int(request, "count", 1), _query_int(request, "status", 503))
        return await self._fake_state(request)

    async def _fake_down(self, request: web.Request) -> web.Response:
        self.set_down(request.query.get("down", "true").lower() == "true")
        return await self._fake_state(request)

    async def _fake_tasks(self, request: web.Request) -> web.Response:
        if request.query.get("paused", "false").lower() == "true":
            self.pause_tasks()
        else:
            self.resume_tasks()
        if "fail" in request.query:
            self.fail_next_tasks(
                _query_int(request, "fail", 1), request.query.get("code", "internal")
            )
        return await self._fake_state(request)

    async def _fake_max_payload(self, request: web.Request) -> web.Response:
        self.max_payload_bytes = _query_int(request, "bytes", DEFAULT_MAX_PAYLOAD)
        return await self._fake_state(request)

    async def _fake_reset(self, request: web.Request) -> web.Response:
        self.reset()
        self.resume_tasks()
        return await self._fake_state(request)

    # -- task processing ---------------------------------------------------------------

    async def _process_tasks(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                if self._tasks_paused.is_set():
                    break
                with self._lock:
                    task = next((t for t in self.tasks if t.status == "enqueued"), None)
                    if task is None:
                        break
                    task.status, task.started_ns = "processing", time.time_ns()
                if self.task_delay_s > 0:
                    await asyncio.sleep(self.task_delay_s)
                with self._lock:
                    self._finish(task)

    def _finish(self, task: FakeTask) -> None:
        """Run one task to completion (holding the lock: no partial state is ever visible)."""
        try:
            if self._fail_tasks:
                code, message = self._fail_tasks.pop(0)
                raise TaskFailure(code, message, "internal")
            apply = getattr(self, "_apply_" + task.type)
            apply(task)
        except TaskFailure as failure:
            task.status, task.error = "failed", failure.error
            for key in ("indexedDocuments", "deletedDocuments"):
                if key in task.details:
                    task.details[key] = 0
        else:
            task.status = "succeeded"
        task.finished_ns = time.time_ns()
        task.payload = None  # the documents are not needed any more

    def _require(self, uid: str | None) -> FakeIndex:
        index = self.indexes.get(uid or "")
        if index is None:
            raise TaskFailure("index_not_found", f"Index `{uid}` not found.")
        return index

    def _new_index(self, uid: str, primary_key: str | None) -> FakeIndex:
        now = time.time_ns()
        index = FakeIndex(uid=uid, primary_key=primary_key, created_ns=now, updated_ns=now)
        self.indexes[uid] = index
        return index

    def _apply_indexCreation(self, task: FakeTask) -> None:
        uid = task.index_uid or ""
        if uid in self.indexes:
            raise TaskFailure("index_already_exists", f"Index `{uid}` already exists.")
        self._new_index(uid, task.payload)

    def _apply_indexUpdate(self, task: FakeTask) -> None:
        index = self._require(task.index_uid)
        primary_key = task.payload
        if primary_key is not None and primary_key != index.primary_key:
            if index.documents:
                raise TaskFailure(
                    "index_primary_key_already_exists",
                    f"Index `{index.uid}` already has a primary key: `{index.primary_key}`.",
                )
            index.primary_key = primary_key
        index.updated_ns = time.time_ns()

    def _apply_indexDeletion(self, task: FakeTask) -> None:
        index = self._require(task.index_uid)
        task.details["deletedDocuments"] = len(index.documents)
        del self.indexes[index.uid]

    def _apply_settingsUpdate(self, task: FakeTask) -> None:
        uid = task.index_uid or ""
        index = self.indexes.get(uid) or self._new_index(uid, None)
        for name, value in task.payload.items():
            if value is None:
                index.settings[name] = copy.deepcopy(DEFAULT_SETTINGS[name])
            elif name in ("typoTolerance", "faceting", "pagination", "embedders"):
                merged = dict(index.settings[name])
                merged.update(value)
                index.settings[name] = merged
            else:
                index.settings[name] = copy.deepcopy(value)
        index.updated_ns = time.time_ns()

    def _apply_documentAdditionOrUpdate(self, task: FakeTask) -> None:
        documents, param_key, replace = task.payload
        uid = task.index_uid or ""
        index = self.indexes.get(uid)
        if index is not None and index.primary_key and param_key not in (None, index.primary_key):
            raise TaskFailure(
                "index_primary_key_already_exists",
                f"Index `{uid}` already has a primary key: `{index.primary_key}`.",
            )
        primary_key = (index.primary_key if index else None) or param_key
        if primary_key is None:
            primary_key = _infer_primary_key(documents)
        # Validate everything first: one bad document fails the whole task, nothing written.
        keys = [_document_key(doc, primary_key) for doc in documents]
        if index is None:
            index = self._new_index(uid, primary_key)
        elif index.primary_key is None:
            index.primary_key = primary_key
        for key, document in zip(keys, documents, strict=True):
            if replace or key not in index.documents:
                index.documents[key] = document
            else:
                index.documents[key] = {**index.documents[key], **document}
            index.note_fields(document)
        index.updated_ns = time.time_ns()
        task.details["indexedDocuments"] = len(documents)

    def _apply_dumpCreation(self, task: FakeTask) -> None:
        uid = dump_uid(task.started_ns or time.time_ns())
        try:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as scratch:
                root = Path(scratch)
                self._write_dump_tree(root, task, uid)
                # Written whole, then renamed: the file is complete once the task succeeds.
                partial = self.dump_dir / f".{uid}.dump.partial"
                with tarfile.open(partial, "w:gz") as archive:
                    archive.add(root, arcname=".")
                partial.replace(self.dump_dir / f"{uid}.dump")
        except OSError as exc:
            raise TaskFailure(
                "dump_process_failed", f"An error occurred during dump creation: {exc}", "internal"
            ) from None
        task.details["dumpUid"] = uid

    def _write_dump_tree(self, root: Path, current: FakeTask, uid: str) -> None:
        """The v6 layout (crates/dump/src/writer.rs), filled from the fake's state."""
        metadata = {
            "dumpVersion": "V6",
            "dbVersion": PKG_VERSION,
            "dumpDate": rfc3339(time.time_ns()),
        }
        (root / "metadata.json").write_text(json.dumps(metadata))
        (root / "instance_uid.uuid").write_text(str(self.instance_uid))
        (root / "keys.jsonl").write_text("")
        (root / "experimental-features.json").write_text("{}")
        (root / "network.json").write_text(json.dumps({"self": None, "remotes": {}}))
        (root / "batches").mkdir()
        (root / "batches" / "queue.jsonl").write_text("")
        (root / "tasks" / "update_files").mkdir(parents=True)
        with (root / "tasks" / "queue.jsonl").open("w") as queue:
            for task in self.tasks:
                line = task.to_json()
                if task is current:
                    # The dump task is recorded as done, with the dump it made.
                    line.update(status="succeeded", details={"dumpUid": uid})
                elif task.status in ("enqueued", "processing"):
                    line["status"] = "enqueued"
                    line["payload"] = task.payload
                queue.write(json.dumps(line) + "\n")
        for index in self.indexes.values():
            folder = root / "indexes" / index.uid
            folder.mkdir(parents=True)
            (folder / "metadata.json").write_text(json.dumps(index.to_json()))
            (folder / "settings.json").write_text(json.dumps(index.settings))
            with (folder / "documents.jsonl").open("w") as documents:
                for document in index.documents.values():
                    documents.write(json.dumps(document) + "\n")

    def _import_dump(self, path: Path) -> None:
        """Load a dump into this (empty) instance, as ``meilisearch --import-dump`` does."""
        if self.indexes or self.tasks:
            raise RuntimeError("a dump is imported only into an empty instance")
        with tarfile.open(path, "r:gz") as archive:
            files = {
                (member.name[2:] if member.name.startswith("./") else member.name): member
                for member in archive.getmembers()
                if member.isfile()
            }

            def read(name: str) -> str:
                member = files.get(name)
                handle = archive.extractfile(member) if member is not None else None
                if handle is None:
                    raise ValueError(f"{path} is not a Meilisearch dump: no {name}")
                return handle.read().decode()

            metadata = json.loads(read("metadata.json"))
            if metadata.get("dumpVersion") != "V6":
                raise ValueError(f"{path}: dump version {metadata.get('dumpVersion')} unsupported")
            self.instance_uid = uuid.UUID(read("instance_uid.uuid").strip())
            for name in sorted(files):
                parts = name.split("/")
                if len(parts) == 3 and parts[0] == "indexes" and parts[2] == "metadata.json":
                    self._import_index(json.loads(read(name)), read, parts[1])
            for line in read("tasks/queue.jsonl").splitlines():
                if line.strip():
                    self.tasks.append(_task_from_dump(json.loads(line)))

    def _import_index(self, meta: Json, read: Callable[[str], str], folder: str) -> None:
        index = FakeIndex(
            uid=meta["uid"],
            primary_key=meta.get("primaryKey"),
            created_ns=parse_rfc3339(meta["createdAt"]),
            updated_ns=parse_rfc3339(meta["updatedAt"]),
        )
        index.settings.update(json.loads(read(f"indexes/{folder}/settings.json")))
        for line in read(f"indexes/{folder}/documents.jsonl").splitlines():
            if line.strip():
                document = json.loads(line)
                index.documents[_document_key(document, index.primary_key or "id")] = document
                index.note_fields(document)
        self.indexes[index.uid] = index

    def _apply_documentDeletion(self, task: FakeTask) -> None:
        index = self._require(task.index_uid)
        if task.payload is None:
            deleted = len(index.documents)
            index.documents.clear()
        else:
            deleted = sum(1 for key in task.payload if index.documents.pop(key, None) is not None)
        task.details["deletedDocuments"] = deleted
        index.updated_ns = time.time_ns()


def _task_from_dump(line: Json) -> FakeTask:
    payload = line.get("payload")
    if line["type"] == "documentAdditionOrUpdate" and payload is not None:
        payload = tuple(payload)  # (documents, primary key, replace), a list in JSON
    return FakeTask(
        uid=line["uid"],
        index_uid=line.get("indexUid"),
        type=line["type"],
        details=line.get("details") or {},
        enqueued_ns=parse_rfc3339(line["enqueuedAt"]),
        payload=payload,
        status=line["status"],
        started_ns=parse_rfc3339(line["startedAt"]) if line.get("startedAt") else None,
        finished_ns=parse_rfc3339(line["finishedAt"]) if line.get("finishedAt") else None,
        error=line.get("error"),
    )


# --------------------------------------------------------------------------------------
# documents


def _parse_documents(data: bytes, content_type: str | None) -> list[Json]:
    if content_type is None:
        raise ApiError(
            415,
            "missing_content_type",
            "A Content-Type header is missing. Accepted values for the Content-Type header "
            f"are: {ACCEPTED_DOCUMENT_TYPES}",
        )
    kind = content_type.split(";")[0].strip().lower()
    formats = {"application/json": "json", "application/x-ndjson": "ndjson", "text/csv": "csv"}
    if kind not in formats:
        raise ApiError(
            415,
            "invalid_content_type",
            f"The Content-Type `{content_type}` is invalid. Accepted values for the "
            f"Content-Type header are: {ACCEPTED_DOCUMENT_TYPES}",
        )
    name = formats[kind]
    if not data.strip():
        raise ApiError(400, "missing_payload", f"A {name} payload is missing.")
    try:
        text = data.decode("utf-8")
        if name == "json":
            parsed = json.loads(text)
            documents = parsed if isinstance(parsed, list) else [parsed]
        elif name == "ndjson":
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            documents = [dict(row) for row in csv.DictReader(io.StringIO(text))]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400,
            "malformed_payload",
            f"The `{name}` payload provided is malformed. `Couldn't serialize document value: "
            f"{exc}`.",
        ) from None
    for document in documents:
        if not isinstance(document, dict):
            raise ApiError(
                400,
                "malformed_payload",
                f"The `{name}` payload provided is malformed. `Couldn't serialize document "
                f"value: invalid type: {type(document).__name__}, expected a map`.",
            )
    return documents


def _infer_primary_key(documents: list[Json]) -> str:
    first = documents[0] if documents else {}
    candidates = [name for name in first if name.lower().endswith("id")]
    if not candidates:
        raise TaskFailure(
            "index_primary_key_no_candidate_found",
            "The primary key inference failed as the engine did not find any field ending "
            "with `id` in its name. Please specify the primary key manually using the "
            "`primaryKey` query parameter.",
        )
    if len(candidates) > 1:
        listed = ", ".join(f"`{c}`" for c in candidates)
        raise TaskFailure(
            "index_primary_key_multiple_candidates_found",
            f"The primary key inference failed as the engine found {len(candidates)} fields "
            f"ending with `id` in their names: {listed}. Please specify the primary key "
            "manually using the `primaryKey` query parameter.",
        )
    return candidates[0]


def _document_key(document: Json, primary_key: str) -> str:
    """Validate a document id like Meilisearch and return it as the external id string."""
    value = document.get(primary_key)
    if value is None:
        raise TaskFailure(
            "missing_document_id",
            f"Document doesn't have a `{primary_key}` attribute: "
            f"`{json.dumps(document, separators=(',', ':'), ensure_ascii=False)}`.",
        )
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        valid = False
    elif isinstance(value, int):
        valid = True
    else:
        valid = bool(_ID_RE.match(value)) and len(value.encode()) <= 511
    if not valid:
        shown = json.dumps(value, ensure_ascii=False)
        raise TaskFailure(
            "invalid_document_id",
            f"Document identifier `{shown}` is invalid. A document identifier can be of type "
            "integer or string, only composed of alphanumeric characters (a-z A-Z 0-9), "
            "hyphens (-) and underscores (_), and can not be more than 511 bytes.",
        )
    return str(value)


def _project(document: Json, displayed: list[str], fields: list[str] | None) -> Json:
    allowed = set(displayed)
    if fields is not None and "*" not in fields:
        allowed &= set(fields)
    return {name: value for name, value in document.items() if name in allowed}


def _validate_setting(name: str, value: Any, *, prefix: str) -> None:
    if name not in DEFAULT_SETTINGS:
        expected = ", ".join(f"`{key}`" for key in DEFAULT_SETTINGS)
        raise ApiError(400, "bad_request", f"Unknown field `{name}`: expected one of {expected}")
    if value is None:
        return
    code = "invalid_settings_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    where = f" at `{prefix}{name}`" if prefix else ""
    if name in _LIST_OF_STRINGS:
        if not isinstance(value, list):
            raise ApiError(
                400,
                code,
                f"Invalid value type{where}: expected an array, but found "
                f"{_json_kind(value)}: `{json.dumps(value)}`",
            )
        for position, item in enumerate(value):
            if not isinstance(item, str):
                raise ApiError(
                    400,
                    code,
                    f"Invalid value type at `{prefix}{name}[{position}]`: expected a string, "
                    f"but found {_json_kind(item)}: `{json.dumps(item)}`",
                )
    elif name == "filterableAttributes":
        if not isinstance(value, list) or not all(isinstance(i, (str, dict)) for i in value):
            raise ApiError(
                400, code, f"Invalid value type{where}: expected an array of strings or objects"
            )
    elif name in _OBJECT_SETTINGS and not isinstance(value, dict):
        raise ApiError(
            400,
            code,
            f"Invalid value type{where}: expected an object, but found {_json_kind(value)}: "
            f"`{json.dumps(value)}`",
        )


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a positive integer" if isinstance(value, int) and value >= 0 else "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


# --------------------------------------------------------------------------------------
# search


_SEARCH_FIELDS = {
    "q",
    "offset",
    "limit",
    "page",
    "hitsPerPage",
    "attributesToRetrieve",
    "attributesToCrop",
    "cropLength",
    "cropMarker",
    "attributesToHighlight",
    "highlightPreTag",
    "highlightPostTag",
    "showMatchesPosition",
    "showRankingScore",
    "showRankingScoreDetails",
    "filter",
    "sort",
    "distinct",
    "facets",
    "matchingStrategy",
    "attributesToSearchOn",
    "rankingScoreThreshold",
    "locales",
}


def _search_params(body: Json) -> Json:
    unknown = set(body) - _SEARCH_FIELDS
    if unknown:
        expected = ", ".join(f"`{name}`" for name in sorted(_SEARCH_FIELDS))
        raise ApiError(
            400, "bad_request", f"Unknown field `{sorted(unknown)[0]}`: expected one of {expected}"
        )

    def integer(name: str, default: int | None) -> int | None:
        value = body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
            raise ApiError(
                400,
                f"invalid_search_{snake}",
                f"Invalid value type at `.{name}`: expected a positive integer, but found "
                f"{_json_kind(value)}: `{json.dumps(value)}`",
            )
        return value

    def strings(name: str) -> list[str] | None:
        value = body.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
            raise ApiError(
                400,
                f"invalid_search_{snake}",
                f"Invalid value type at `.{name}`: expected an array, but found "
                f"{_json_kind(value)}: `{json.dumps(value)}`",
            )
        return value

    q = body.get("q")
    if q is not None and not isinstance(q, str):
        raise ApiError(
            400,
            "invalid_search_q",
            f"Invalid value type at `.q`: expected a string, but found {_json_kind(q)}: "
            f"`{json.dumps(q)}`",
        )
    strategy = body.get("matchingStrategy", "last")
    if strategy not in ("last", "all", "frequency"):
        raise ApiError(
            400,
            "invalid_search_matching_strategy",
            f"Unknown value `{strategy}` at `.matchingStrategy`: expected one of `last`, "
            "`all`, `frequency`",
        )
    return {
        "q": q or "",
        "offset": integer("offset", 0),
        "limit": integer("limit", 20),
        "page": integer("page", None),
        "hitsPerPage": integer("hitsPerPage", None),
        "attributesToRetrieve": strings("attributesToRetrieve") or ["*"],
        "attributesToCrop": strings("attributesToCrop") or [],
        "cropLength": integer("cropLength", 10),
        "cropMarker": body.get("cropMarker", "…") or "",
        "attributesToHighlight": strings("attributesToHighlight") or [],
        "highlightPreTag": body.get("highlightPreTag", "<em>"),
        "highlightPostTag": body.get("highlightPostTag", "</em>"),
        "showRankingScore": bool(body.get("showRankingScore", False)),
        "filter": body.get("filter"),
        "matchingStrategy": strategy,
    }


def _normalize(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _tokens(text: str) -> list[str]:
    return [_normalize(m.group()) for m in _WORD_RE.finditer(text)]


def _values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, (int, float)):
        yield str(value)
    elif isinstance(value, list):
        for item in value:
            yield from _values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _values(item)


def _term_matches(token: str, terms: list[str], prefix_last: bool) -> int | None:
    for position, term in enumerate(terms):
        if token == term or (prefix_last and position == len(terms) - 1 and token.startswith(term)):
            return position
    return None


def _rank(
    documents: list[Json], terms: list[str], prefix_last: bool, searchable: list[str], strategy: str
) -> list[tuple[float, Json]]:
    scored: list[tuple[tuple[int, int, int, int], float, Json]] = []
    for order, document in enumerate(documents):
        best_attribute: dict[int, int] = {}
        occurrences = 0
        for attribute_rank, name in enumerate(searchable):
            if name not in document:
                continue
            for text in _values(document[name]):
                for token in _tokens(text):
                    position = _term_matches(token, terms, prefix_last)
                    if position is None:
                        continue
                    occurrences += 1
                    best_attribute.setdefault(position, attribute_rank)
        # "last": words are dropped from the end, so a document needs the first k words.
        matched = 0
        while matched < len(terms) and matched in best_attribute:
            matched += 1
        if matched == 0 or (strategy == "all" and matched < len(terms)):
            continue
        attribute = min(best_attribute[p] for p in range(matched))
        key = (-matched, attribute, -occurrences, order)
        score = round(matched / len(terms) * (1.0 - attribute / (2 * max(1, len(searchable)))), 6)
        scored.append((key, score, document))
    scored.sort(key=lambda item: item[0])
    return [(score, document) for _, score, document in scored]


def _apply_filter(documents: list[Json], expression: Any, filterable: set[str]) -> list[Json]:
    if expression is None or expression == "" or expression == []:
        return documents
    clauses = _filter_clauses(expression)
    for disjunction in clauses:
        for attribute, _, _ in disjunction:
            if attribute not in filterable:
                available = ", ".join(sorted(filterable))
                raise ApiError(
                    400,
                    "invalid_search_filter",
                    f"Attribute `{attribute}` is not filterable. Available filterable "
                    f"attributes are: `{available}`.",
                )

    def holds(document: Json, attribute: str, operator: str, value: str) -> bool:
        present = (
            {str(v) for v in _values(document.get(attribute))} if attribute in document else set()
        )
        equal = value in present
        return equal if operator == "=" else not equal

    return [
        document
        for document in documents
        if all(any(holds(document, *condition) for condition in group) for group in clauses)
    ]


_CONDITION_RE = re.compile(
    r"""^\s*("[^"]*"|'[^']*'|[\w.-]+)\s*(!=|=)\s*("[^"]*"|'[^']*'|[\w.:+-]+)\s*$"""
)


def _filter_clauses(expression: Any) -> list[list[tuple[str, str, str]]]:
    """Filter as a conjunction of disjunctions (CNF) of ``attr = value`` / ``attr != value``."""
    if isinstance(expression, list):
        groups: list[list[tuple[str, str, str]]] = []
        for item in expression:
            if isinstance(item, list):
                groups.append([c for part in item for c in _filter_clauses(part)[0]])
            else:
                groups.extend(_filter_clauses(item))
        return groups
    if not isinstance(expression, str):
        raise ApiError(400, "invalid_search_filter", "Invalid value type at `.filter`.")
    groups = []
    for conjunct in re.split(r"\s+AND\s+", expression.strip()):
        group = []
        for disjunct in re.split(r"\s+OR\s+", conjunct):
            match = _CONDITION_RE.match(disjunct)
            if match is None:
                raise ApiError(
                    400,
                    "invalid_search_filter",
                    f"Was expecting an operation `=`, `!=` at `{disjunct}` (the fake "
                    "Meilisearch supports `=` and `!=` joined by AND / OR).",
                )
            attribute, operator, value = match.groups()
            group.append((attribute.strip("\"'"), operator, value.strip("\"'")))
        groups.append(group)
    return groups


def _hit(
    document: Json,
    score: float,
    params: Json,
    terms: list[str],
    prefix_last: bool,
    displayed: list[str],
) -> Json:
    retrieve = params["attributesToRetrieve"]
    hit = _project(document, displayed, retrieve)
    allowed = set(displayed)
    shown = [name for name in document if name in allowed]
    options: dict[str, tuple[bool, int | None]] = {}
    for item in params["attributesToHighlight"]:
        for name in shown if item == "*" else [item]:
            if name in shown:
                options[name] = (True, options.get(name, (False, None))[1])
    for item in params["attributesToCrop"]:
        name, _, length = item.partition(":")
        crop = int(length) if length.isdigit() else params["cropLength"]
        for target in shown if name == "*" else [name]:
            if target in shown:
                options[target] = (options.get(target, (False, None))[0], crop)
    if options:
        # Retrieved attributes come along unformatted, as in Meilisearch.
        for name in hit:
            options.setdefault(name, (False, None))
        formatted: Json = {}
        for name in document:
            if name in options:
                highlight, crop = options[name]
                formatted[name] = _format(
                    document[name], highlight, crop, params, terms, prefix_last
                )
        hit["_formatted"] = formatted
    if params["showRankingScore"]:
        hit["_rankingScore"] = score
    return hit


def _format(
    value: Any, highlight: bool, crop: int | None, params: Json, terms: list[str], prefix_last: bool
) -> Any:
    if isinstance(value, list):
        return [_format(v, highlight, crop, params, terms, prefix_last) for v in value]
    if isinstance(value, dict):
        return {
            k: _format(v, highlight, crop, params, terms, prefix_last) for k, v in value.items()
        }
    if not highlight and crop is None:
        return value
    if isinstance(value, bool) or value is None:
        return value
    text = str(value)
    if crop is not None and crop > 0:
        text = _crop(text, crop, params["cropMarker"], terms, prefix_last)
    if highlight and terms:
        text = _highlight(
            text, params["highlightPreTag"], params["highlightPostTag"], terms, prefix_last
        )
    return text


def _crop(text: str, length: int, marker: str, terms: list[str], prefix_last: bool) -> str:
    words = list(_WORD_RE.finditer(text))
    if len(words) <= length:
        return text
    matches = [
        i
        for i, w in enumerate(words)
        if _term_matches(_normalize(w.group()), terms, prefix_last) is not None
    ]
    if not matches:
        start = 0
    else:
        # The window with the most distinct query words wins; then center it on its matches.
        best_first, best_unique = matches[0], -1
        for first in matches:
            inside = [i for i in matches if first <= i < first + length]
            unique = len(
                {_term_matches(_normalize(words[i].group()), terms, prefix_last) for i in inside}
            )
            if unique > best_unique:
                best_first, best_unique = first, unique
        last = max(i for i in matches if best_first <= i < best_first + length)
        slack = length - (last - best_first + 1)
        start = max(0, min(best_first - slack // 2, len(words) - length))
    end = start + length
    # Keep leading/trailing punctuation when the window touches an end of the text.
    first_char = 0 if start == 0 else words[start].start()
    last_char = len(text) if end >= len(words) else words[end - 1].end()
    piece = text[first_char:last_char]
    prefix = marker if start > 0 else ""
    suffix = marker if end < len(words) else ""
    return f"{prefix}{piece}{suffix}"


def _highlight(text: str, pre: str, post: str, terms: list[str], prefix_last: bool) -> str:
    out: list[str] = []
    cursor = 0
    for match in _WORD_RE.finditer(text):
        word = match.group()
        position = _term_matches(_normalize(word), terms, prefix_last)
        if position is None:
            continue
        # A prefix match highlights only the typed part, as Meilisearch does ("<em>hel</em>lo").
        length = len(word) if _normalize(word) == terms[position] else len(terms[position])
        out.append(text[cursor : match.start()])
        out.append(f"{pre}{word[:length]}{post}{word[length:]}")
        cursor = match.end()
    out.append(text[cursor:])
    return "".join(out)


# --------------------------------------------------------------------------------------
# helpers


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400,
            f"invalid_{name.lower()}",
            f"Invalid value in parameter `{name}`: could not parse `{raw}` as a positive integer",
        ) from None
    return value


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.2f} {unit}".replace(".00 ", " ")
        value /= 1024
    return f"{size} B"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Meilisearch for fleet's tests")
    parser.add_argument("--host", default=os.environ.get("MEILI_HTTP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=7700)
    parser.add_argument("--master-key", default=os.environ.get("MEILI_MASTER_KEY"))
    parser.add_argument("--max-payload-bytes", type=int, default=DEFAULT_MAX_PAYLOAD)
    parser.add_argument("--task-delay", type=float, default=0.005, help="seconds per task")
    parser.add_argument("--dump-dir", default=os.environ.get("MEILI_DUMP_DIR", "dumps/"))
    parser.add_argument("--import-dump", default=os.environ.get("MEILI_IMPORT_DUMP"))
    args = parser.parse_args(argv)
    fake = FakeMeili(
        master_key=args.master_key,
        max_payload_bytes=args.max_payload_bytes,
        task_delay_s=args.task_delay,
        dump_dir=args.dump_dir,
        import_dump=args.import_dump,
    )

    async def serve() -> None:
        url = await fake.start(args.host, args.port)
        print(f"fake meilisearch listening on {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
