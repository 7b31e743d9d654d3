"""The crawl frontier in JetStream: seen-sets, counted events, held depth layers, crawl jobs.

* **Seen-set** (``FLEET_FRONTIER``): one message per (crawl, URL) on subject
  ``<p>.frontier.<crawl>.<url id>``; the stream keeps at most one message per subject and
  refuses the next (``discard_new_per_subject``), so the first writer wins atomically on
  the server, for the crawl's whole life (no dedup window involved) and across restarts.
  Only the server holds the set: a worker keeps a bounded cache of URLs it knows are seen.
* **Events** (``FLEET_CRAWL``): ``<p>.crawl.<crawl>.<kind>[.<reason>].<depth>``, one message
  per URL and kind with a ``Nats-Msg-Id``, so a redelivered task cannot count twice;
  counters are the per-subject message counts (one ``stream_info`` call per crawl).
  Held layers of a depth-limited crawl live here too (``...hold.<depth>``).
* **Jobs** (KV bucket ``FLEET_CRAWLS``): the ``CrawlSpec`` of each crawl, its state.
* **Page cap** (``FLEET_CAP_<crawl>``, only with ``--max-pages``): a stream whose message
  limit is the cap; a URL is queued only if its message fits (first N win, exactly).

Publishes are pipelined through ``JsPipe`` (one reply subscription, acks decoded here),
which is what makes tens of thousands of checks per second possible from Python.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import KeyNotFoundError, NotFoundError

from fleet.errors import TransientError
from fleet.messages import (
    CrawlEvent,
    CrawlSpec,
    FrontierEntry,
    Skipped,
    UrlTask,
    crawl_event_encoder,
    crawl_spec_decoder,
    crawl_spec_encoder,
    frontier_entry_decoder,
    frontier_entry_encoder,
    skipped_encoder,
    url_task_encoder,
)
from fleet.nats.replicas import ensure_bucket, replicated, replicated_kv, replication_explained
from fleet.settings import Settings

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

PIPE_WINDOW: Final = 4096
PIPE_TIMEOUT_S: Final = 15.0
SPEC_TTL_S: Final = 0.5
# Server answers meaning "this subject already has its message".
_EXISTS_CODES: Final = frozenset({10077, 10071})
_OVER_LIMIT_CODES: Final = frozenset({10077, 10027, 10047})

# Event kinds (subject tokens). Terminal kinds close a queued task.
QUEUED: Final = "queued"
FETCHED: Final = "fetched"
UNCHANGED: Final = "unchanged"
REDIRECTED: Final = "redirected"
DEAD: Final = "dead"
SKIPPED: Final = "skipped"  # a queued task skipped (cancelled, robots): .<reason>.<depth>
LINK: Final = "link"  # a link not followed: .<reason>.<depth>
INDEXED: Final = "indexed"
INDEX_FAILED: Final = "index_failed"
SITEMAP_QUEUED: Final = "sitemap_queued"
SITEMAP_DONE: Final = "sitemap_done"
RELEASED: Final = "released"
HOLD: Final = "hold"
TERMINAL: Final = frozenset({FETCHED, UNCHANGED, REDIRECTED, DEAD, SKIPPED})


def crawl_topology(settings: Settings) -> tuple[StreamConfig, StreamConfig]:
    """The frontier and crawl-events streams (created with the rest of the topology)."""
    frontier = StreamConfig(
        name=settings.frontier_stream,
        description="fleet: crawl seen-sets, one message per (crawl, URL), first writer wins",
        subjects=[f"{settings.frontier_subject}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        allow_direct=True,
        duplicate_window=settings.dedup_window_s,  # unused (no msg ids): the server default
    )
    events = StreamConfig(
        name=settings.crawl_stream,
        description="fleet: crawl events (one per URL and kind) and held depth layers",
        subjects=[f"{settings.crawl_subject}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=settings.dedup_window_s,
    )
    return frontier, events


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """A PubAck as JsPipe reads it: stored (``seq``), a duplicate, or refused (``code``)."""

    seq: int = 0
    duplicate: bool = False
    code: int = 0  # JetStream err_code when refused

    @property
    def ok(self) -> bool:
        """Stored, or a duplicate of a stored message: not refused."""
        return self.code == 0


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_puback_decoder = msgspec.json.Decoder(_PubAck)


class JsPipe:
    """Pipelined JetStream publishes whose refusals are answers, not errors.

    nats-py's ``publish_async`` raises inside its reply handler on an API error, leaving the
    future unresolved, and its ``publish`` costs a round trip each: neither can check
    thousands of first-writer-wins entries per second. This publishes over core NATS with
    one wildcard reply subscription and decodes each PubAck itself.
    """

    def __init__(self, nc: NATS, *, window: int = PIPE_WINDOW) -> None:
        self._nc = nc
        self._window = asyncio.Semaphore(window)
        self._futures: dict[str, asyncio.Future[bytes]] = {}
        self._inbox = ""
        self._n = 0
        self._sub: object | None = None

    async def start(self) -> None:
        """Subscribe to the reply inbox, once (``publish`` calls it first)."""
        if self._sub is None:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(
                f"{self._inbox}.*", cb=self._on_reply, pending_msgs_limit=1_000_000
            )

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    async def publish(self, items: Sequence[tuple[str, bytes, dict[str, str] | None]]) -> list[Ack]:
        """Publish every (subject, payload, headers) and return their acks, in order.

        Raises TransientError if NATS does not answer them all within PIPE_TIMEOUT_S.
        """
        await self.start()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bytes]] = []
        replies_to: list[str] = []
        try:
            for subject, payload, headers in items:
                await self._window.acquire()
                self._n += 1
                reply = f"{self._inbox}.{self._n}"
                future: asyncio.Future[bytes] = loop.create_future()
                future.add_done_callback(lambda _f: self._window.release())
                self._futures[reply] = future
                futures.append(future)
                replies_to.append(reply)
                await self._nc.publish(subject, payload, reply=reply, headers=headers)
            async with asyncio.timeout(PIPE_TIMEOUT_S):
                replies = await asyncio.gather(*futures)
        except (TimeoutError, OSError, ConnectionError) as exc:
            raise TransientError(
                f"JetStream did not acknowledge {len(items)} publish(es): {exc!r}",
                reason="frontier_unavailable",
            ) from None
        except Exception as exc:  # nats-py's own (connection closed, no responders...)
            raise TransientError(
                f"JetStream publish failed: {exc!r}", reason="frontier_unavailable"
            ) from exc
        finally:
            for reply, future in zip(replies_to, futures, strict=True):
                if not future.done():
                    future.cancel()
                    self._futures.pop(reply, None)
        return [_ack(data) for data in replies]

    async def close(self) -> None:
        """Drop the reply subscription; errors are ignored (the connection may be gone)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]


def _ack(data: bytes) -> Ack:
    try:
        ack = _puback_decoder.decode(data)
    except msgspec.DecodeError:
        return Ack(code=-1)
    if ack.error is not None:
        return Ack(code=ack.error.err_code or ack.error.code or -1)
    return Ack(seq=ack.seq, duplicate=ack.duplicate)


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A URL a task found: its id, the depth it would have, and the scope's verdict."""

    url: str
    uid: str
    depth: int
    verdict: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One crawl event to count: ``kind`` (and ``reason``), at ``depth``, for ``uid``."""

    kind: str
    uid: str
    depth: int
    body: CrawlEvent
    reason: str = ""


class _SeenCache:
    """Bounded LRU of (crawl, url id) known to be in the seen-set (entries never leave it)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def __contains__(self, key: tuple[str, str]) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def add(self, key: tuple[str, str]) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)


class Frontier:
    """Crawl state in JetStream for workers, indexer and the crawl commands."""

    def __init__(self, nc: NATS, js: JetStreamContext, settings: Settings) -> None:
        self._nc = nc
        self._js = js
        self._s = settings
        self._pipe = JsPipe(nc)
        self._seen = _SeenCache(settings.crawl_seen_cache)
        self._kv: KeyValue | None = None
        self._specs: dict[str, tuple[float, CrawlSpec | None]] = {}
        self.checks = 0  # seen-set round trips (for the benchmark)

    async def close(self) -> None:
        """Close the publish pipe; the NATS connection is the caller's to close."""
        await self._pipe.close()

    # -- the seen-set ---------------------------------------------------------------------

    def _subject(self, crawl: str, uid: str) -> str:
        return f"{self._s.frontier_subject}.{crawl}.{uid}"

    async def claim(
        self, crawl: str, owner: str, candidates: Sequence[Candidate], *, recheck: bool = False
    ) -> list[bool]:
        """First-writer-wins entries for ``candidates``: True where ``owner`` holds it (new
        now, or, with ``recheck``, written by this owner on an earlier attempt).

        ``recheck`` is for a redelivered task: its earlier attempt may have claimed URLs and
        died before queueing them, so entries that exist are read back and compared.
        """
        mine = [False] * len(candidates)
        todo = [i for i, c in enumerate(candidates) if recheck or (crawl, c.uid) not in self._seen]
        if not todo:
            return mine
        items = [
            (
                self._subject(crawl, candidates[i].uid),
                frontier_entry_encoder.encode(
                    FrontierEntry(
                        url=candidates[i].url,
                        depth=candidates[i].depth,
                        owner=owner,
                        verdict=candidates[i].verdict,
                    )
                ),
                None,
            )
            for i in todo
        ]
        self.checks += len(items)
        acks = await self._pipe.publish(items)
        existing: list[int] = []
        for i, ack in zip(todo, acks, strict=True):
            if ack.ok:
                mine[i] = True
            elif ack.code in _EXISTS_CODES:
                existing.append(i)
            else:
                raise TransientError(
                    f"frontier refused an entry (err_code {ack.code})", reason="frontier_error"
                )
        if recheck and existing:
            owned = await asyncio.gather(
                *(self._owned_by(crawl, candidates[i].uid, owner) for i in existing)
            )
            for i, own in zip(existing, owned, strict=True):
                mine[i] = own
        for i in existing:
            if not mine[i]:
                self._seen.add((crawl, candidates[i].uid))
        return mine

    async def _owned_by(self, crawl: str, uid: str, owner: str) -> bool:
        try:
            raw = await self._js.get_msg(
                self._s.frontier_stream, subject=self._subject(crawl, uid), direct=True
            )
        except NotFoundError:
            return False
        try:
            return frontier_entry_decoder.decode(raw.data or b"").owner == owner
        except msgspec.DecodeError:
            return False

    def remember(self, crawl: str, uids: Sequence[str]) -> None:
        """Cache URLs this worker has claimed and seen through (queued or recorded)."""
        for uid in uids:
            self._seen.add((crawl, uid))

    # -- events and tasks -----------------------------------------------------------------

    def event_subject(self, crawl: str, kind: str, depth: int, reason: str = "") -> str:
        """``<p>.crawl.<crawl>.<kind>[.<reason>].<depth>``: its message count is the counter."""
        middle = f"{kind}.{reason}" if reason else kind
        return f"{self._s.crawl_subject}.{crawl}.{middle}.{depth}"

    async def record(self, crawl: str, events: Sequence[Event]) -> None:
        """Count ``events`` (idempotent: one message per URL, kind and reason)."""
        if not events:
            return
        items = [
            (
                self.event_subject(crawl, e.kind, e.depth, e.reason),
                crawl_event_encoder.encode(e.body),
                {"Nats-Msg-Id": f"{e.kind}{e.reason}-{crawl}-{e.uid}"},
            )
            for e in events
        ]
        self._raise_refused(await self._pipe.publish(items), "crawl event")

    async def count_dead_letter(self, task: UrlTask) -> None:
        """Count a dead-lettered crawl task in its crawl (idempotent); other tasks: nothing.

        The worker calls it before the term of a URL it dead-letters, the sweep before it
        deletes a stranded URL from the URLs stream.
        """
        if task.crawl is None:
            return
        kind = DEAD if task.kind == "page" else SITEMAP_DONE
        body = CrawlEvent(url=task.url, depth=task.depth, detail="dead")
        await self.record(task.crawl, [Event(kind, task.id, task.depth, body)])

    async def enqueue(self, tasks: Sequence[UrlTask]) -> None:
        """Publish crawl tasks to the URLs stream (dedup id per crawl and URL)."""
        items = [
            (
                self._s.urls_subject,
                url_task_encoder.encode(t),
                {"Nats-Msg-Id": f"c-{t.crawl}-{t.id}"},
            )
            for t in tasks
        ]
        self._raise_refused(await self._pipe.publish(items), "crawl task")

    async def hold(self, crawl: str, depth: int, tasks: Sequence[UrlTask]) -> None:
        """Keep tasks of a depth-limited crawl's next layer until the layer is released."""
        subject = self.event_subject(crawl, HOLD, depth)
        items = [
            (subject, url_task_encoder.encode(t), {"Nats-Msg-Id": f"h-{crawl}-{t.id}"})
            for t in tasks
        ]
        self._raise_refused(await self._pipe.publish(items), "held task")

    async def skipped(self, records: Sequence[Skipped]) -> None:
        """Write skipped URLs to the fleet's skipped stream (one record per crawl and URL)."""
        items = [
            (
                f"{self._s.skipped_subject}.{r.reason}",
                skipped_encoder.encode(r),
                {"Nats-Msg-Id": f"skip-{r.crawl or ''}-{r.id}"},
            )
            for r in records
        ]
        self._raise_refused(await self._pipe.publish(items), "skipped record")

    @staticmethod
    def _raise_refused(acks: Sequence[Ack], what: str) -> None:
        refused = [a.code for a in acks if not a.ok]
        if refused:
            raise TransientError(
                f"JetStream refused {len(refused)} {what}(s) (err_code {refused[0]})",
                reason="frontier_error",
            )

    async def release(self, crawl: str, depth: int) -> int:
        """Move a held layer to the URLs stream, mark it released, drop the held copies.

        Idempotent: a release repeated after a crash publishes the same dedup ids.
        """
        subject = self.event_subject(crawl, HOLD, depth)
        tasks = await self._read_raw(self._s.crawl_stream, subject)
        for start in range(0, len(tasks), 1000):
            chunk = tasks[start : start + 1000]
            items = [
                (self._s.urls_subject, data, {"Nats-Msg-Id": msg_id}) for msg_id, data in chunk
            ]
            self._raise_refused(await self._pipe.publish(items), "released task")
        marker = Event(RELEASED, f"layer{depth}", depth, CrawlEvent(url="", depth=depth))
        await self.record(crawl, [marker])
        with contextlib.suppress(NotFoundError):
            await self._js.purge_stream(self._s.crawl_stream, subject=subject)
        return len(tasks)

    async def _read_raw(self, stream: str, subject: str) -> list[tuple[str, bytes]]:
        """(task dedup id, payload) of every message on ``subject``."""
        sub = await self._js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                mem_storage=True,
                inactive_threshold=30.0,
            ),
        )
        out: list[tuple[str, bytes]] = []
        try:
            while True:
                info = await sub.consumer_info()
                if not info.num_pending:
                    break
                for msg in await sub.fetch(min(1000, info.num_pending), timeout=5):
                    held_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                    out.append((held_id.replace("h-", "c-", 1), msg.data))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    async def counts(self, crawl: str) -> dict[str, dict[int, int]]:
        """``{kind or kind.reason: {depth: messages}}`` of one crawl's events."""
        try:
            info = await self._js.stream_info(
                self._s.crawl_stream, subjects_filter=f"{self._s.crawl_subject}.{crawl}.>"
            )
        except NotFoundError:
            return {}
        prefix = f"{self._s.crawl_subject}.{crawl}."
        out: dict[str, dict[int, int]] = {}
        for subject, n in (info.state.subjects or {}).items():
            kind, _, depth = subject.removeprefix(prefix).rpartition(".")
            if depth.isdigit():
                out.setdefault(kind, {})[int(depth)] = n
        return out

    async def discovered(self, crawl: str) -> int:
        """Distinct URLs in the crawl's seen-set (followed or not)."""
        try:
            info = await self._js.stream_info(
                self._s.frontier_stream, subjects_filter=f"{self._s.frontier_subject}.{crawl}.*"
            )
        except NotFoundError:
            return 0
        return len(info.state.subjects or {})

    # -- the page cap ---------------------------------------------------------------------

    async def create_cap(self, crawl: str, max_pages: int) -> None:
        """The stream whose message limit is the crawl's page cap."""
        config = StreamConfig(
            name=self._s.crawl_cap_stream(crawl),
            description=f"fleet: page cap of crawl {crawl}",
            subjects=[f"{self._s.crawl_subject}-cap.{crawl}"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_msgs=max_pages,
            discard=DiscardPolicy.NEW,
            duplicate_window=self._s.dedup_window_s,
        )
        with replication_explained(config.name or "", self._s.stream_replicas):
            await self._js.add_stream(replicated(config, self._s))

    async def within_cap(self, crawl: str, uids: Sequence[str]) -> list[bool]:
        """Take a page of the cap for each URL: True while the cap has room (or the URL
        already holds one: same dedup id), False once it is full."""
        subject = f"{self._s.crawl_subject}-cap.{crawl}"
        acks = await self._pipe.publish([(subject, b"", {"Nats-Msg-Id": u}) for u in uids])
        out = []
        for ack in acks:
            if not ack.ok and ack.code not in _OVER_LIMIT_CODES:
                raise TransientError(
                    f"page cap refused a claim (err_code {ack.code})", reason="frontier_error"
                )
            out.append(ack.ok)
        return out

    # -- crawl jobs -----------------------------------------------------------------------

    async def bucket(self) -> KeyValue:
        """The crawl jobs KV bucket, created on first use (history 1: the current spec)."""
        if self._kv is None:
            config = KeyValueConfig(
                bucket=self._s.crawls_bucket,
                history=1,
                description="fleet: crawl jobs (spec and state)",
            )
            self._kv = await ensure_bucket(self._js, replicated_kv(config, self._s))
        return self._kv

    async def put_spec(self, spec: CrawlSpec) -> None:
        """Write a crawl's spec (new, or its state changed) and cache it in this process."""
        kv = await self.bucket()
        await kv.put(spec.id, crawl_spec_encoder.encode(spec))
        self._specs[spec.id] = (time.monotonic(), spec)

    async def spec(self, crawl: str, *, fresh: bool = False) -> CrawlSpec | None:
        """The crawl's spec; cached for SPEC_TTL_S (a cancel reaches workers that fast)."""
        now = time.monotonic()
        cached = self._specs.get(crawl)
        if not fresh and cached is not None and now - cached[0] < SPEC_TTL_S:
            return cached[1]
        kv = await self.bucket()
        try:
            entry = await kv.get(crawl)
            spec = crawl_spec_decoder.decode(entry.value or b"")
        except KeyNotFoundError:
            spec = None
        self._specs[crawl] = (now, spec)
        return spec

    async def specs(self) -> list[CrawlSpec]:
        """Every crawl job, oldest first."""
        kv = await self.bucket()
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return []
        out = []
        for key in keys:
            spec = await self.spec(key, fresh=True)
            if spec is not None:
                out.append(spec)
        return sorted(out, key=lambda s: s.created_at)

    async def read_events(self, crawl: str, kind: str) -> list[bytes]:
        """Payloads of every event of one kind (e.g. fetched, for a recrawl)."""
        subject = f"{self._s.crawl_subject}.{crawl}.{kind}.*"
        return [data for _, data in await self._read_raw(self._s.crawl_stream, subject)]
