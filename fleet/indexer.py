"""Indexer role: pull pages in batches, upsert them into the sink, ack after commit.

It also runs the sweep of stranded URLs (``fleet.sweep``): every deployment has an indexer.

A batch is bounded by size (``indexer_batch_size``) and time (``indexer_batch_wait_s``).
If the sink is unreachable the indexer keeps the batch, tells JetStream it is still working
on it, and retries with backoff: it acks nothing until the sink has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from fleet.disposition import Settler, backoff_delay
from fleet.errors import BadMessage, FleetError, PermanentError, SinkUnavailable
from fleet.messages import CrawlEvent, Page, UrlTask, page_decoder
from fleet.nats.frontier import INDEX_FAILED, INDEXED, Event, Frontier
from fleet.nats.session import nats_session
from fleet.nats.streams import INDEXER_CONSUMER, pull
from fleet.settings import Settings
from fleet.sinks import Sink
from fleet.sweep import Sweeper
from fleet.telemetry import Hook, Telemetry
from fleet.urls import url_id

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class _Item:
    msg: Msg
    page: Page | None
    error: BaseException | None = None


class Indexer:
    """Pulls pages in batches, upserts them into the sink, and settles each after the commit.

    Duplicates within a batch (one canonical URL) become one document, the last one winning.
    Only an undecodable message or a document the sink rejects is dead-lettered: a sink outage
    is waited out, never counted as a failed attempt. ``indexed`` and ``batches`` count work done.
    """

    def __init__(
        self,
        js: JetStreamContext,
        sink: Sink,
        settings: Settings,
        *,
        telemetry: Telemetry | None = None,
        frontier: Frontier | None = None,
    ) -> None:
        self._js = js
        self._frontier = frontier
        self._telemetry = telemetry or Telemetry.disabled()
        self._sink = sink
        self._settings = settings
        # A result is dead-lettered only for a bad message or a document the sink refuses.
        self._settler = Settler(js, settings, stage="indexer", max_deliver=-1)
        self.indexed = 0
        self.batches = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Index batches until ``stop`` is set.

        A batch in hand is finished first; if the sink is down at that point, its messages are
        handed back for redelivery instead of waiting for the sink.
        """
        sub = await self._js.pull_subscribe_bind(
            durable=INDEXER_CONSUMER, stream=self._settings.results_stream
        )
        try:
            while not stop.is_set():
                msgs = await self._next_batch(sub, stop)
                if msgs:
                    await self._index(msgs, stop)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _next_batch(
        self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> list[Msg]:
        size = self._settings.indexer_batch_size
        stream = self._settings.results_stream
        msgs = await pull(sub, size, stop, stream=stream)
        if not msgs:
            return msgs
        # Fill the batch up to its time bound, so a trickle still makes few commits.
        deadline = time.monotonic() + self._settings.indexer_batch_wait_s
        while len(msgs) < size and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0.01:
                break
            more = await pull(sub, size - len(msgs), stop, stream=stream, wait_s=left)
            if not more:
                break
            msgs.extend(more)
        return msgs

    async def _index(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        with self._telemetry.batch(msgs, stage="indexer") as batch:
            await self._index_batch(msgs, stop, batch)

    async def _index_batch(self, msgs: list[Msg], stop: asyncio.Event, batch: Hook) -> None:
        items: list[_Item] = []
        for msg in msgs:
            try:
                items.append(_Item(msg, page_decoder.decode(msg.data)))
            except Exception as exc:
                items.append(_Item(msg, None, BadMessage(f"undecodable page message: {exc}")))
        # Two URLs with one canonical URL are one document: the last one wins.
        latest: dict[str, Page] = {}
        for item in items:
            if item.page is not None:
                latest[item.page.id] = item.page
        rejected = await self._upsert(list(latest.values()), [i.msg for i in items], stop)
        if rejected is None:
            return  # stopping while the sink was down: messages were nak'ed
        for item in items:
            if item.page is not None and item.page.id in rejected:
                item.error = PermanentError(rejected[item.page.id], reason="sink_rejected")
        if not await self._count_crawl_pages(items):
            for item in items:
                await self._settler.release(item.msg)
            return
        self.batches += 1
        for index, item in enumerate(items):
            meta = item.msg.metadata
            url = item.page.url if item.page else "?"
            item_id = item.page.id if item.page else "?"
            # The document's own span (in its URL's trace) is current while it is settled.
            with batch.document(index) as doc:
                doc.set_url(url)
                decision = await self._settler.settle(
                    item.msg,
                    item.error,
                    attempt=meta.num_delivered or 1,
                    url=url,
                    item_id=item_id,
                    seq=meta.sequence.stream if meta.sequence else 0,
                )
                doc.settled(
                    item.error,
                    action=decision.action.value,
                    reason=decision.reason,
                    dead_letter=decision.dead_letter,
                )
            if item.error is None:
                self.indexed += 1

    async def _count_crawl_pages(self, items: list[_Item]) -> bool:
        """Count crawl pages indexed (or refused) before their acks; False if that failed
        (the batch is then handed back: its upsert and these counts are idempotent)."""
        if self._frontier is None:
            return True
        by_crawl: dict[str, list[Event]] = {}
        for item in items:
            page = item.page
            if page is None or page.crawl is None:
                continue
            if item.error is None:
                kind = INDEXED
            elif isinstance(item.error, PermanentError):
                kind = INDEX_FAILED
            else:
                continue
            body = CrawlEvent(url=page.url, depth=page.depth)
            by_crawl.setdefault(page.crawl, []).append(
                Event(kind, url_id(page.url), page.depth, body)
            )
        try:
            for crawl, events in by_crawl.items():
                await self._frontier.record(crawl, events)
        except FleetError as exc:
            log.warning("could not count indexed crawl pages (%s); batch handed back", exc)
            return False
        return True

    async def _upsert(
        self, pages: Sequence[Page], msgs: list[Msg], stop: asyncio.Event
    ) -> dict[str, str] | None:
        attempt = 0
        while True:
            try:
                rejected = (
                    await self._heartbeat_while(self._sink.upsert(pages), msgs) if pages else []
                )
                return {r.id: r.reason for r in rejected}
            except SinkUnavailable as exc:
                attempt += 1
                delay = backoff_delay(attempt, 0.5, self._settings.sink_retry_max_s)
                log.warning("sink unavailable (%s); retrying in %.1fs, nothing acked", exc, delay)
            if not await self._hold(msgs, delay, stop):
                for msg in msgs:
                    await self._settler.release(msg)
                return None

    async def _heartbeat_while(self, work: Awaitable[T], msgs: list[Msg]) -> T:
        """Await ``work`` (a slow sink commit) while telling JetStream the batch is in progress."""
        tick = max(0.5, self._settings.ack_wait_s / 3)

        async def beat() -> None:
            while True:
                await asyncio.sleep(tick)
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

        beater = asyncio.create_task(beat())
        try:
            return await work
        finally:
            beater.cancel()

    async def _hold(self, msgs: list[Msg], delay: float, stop: asyncio.Event) -> bool:
        """Wait ``delay`` while keeping the batch ours; False if asked to stop meanwhile."""
        deadline = time.monotonic() + delay
        tick = max(0.5, self._settings.ack_wait_s / 3)
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(left, tick))
            if stop.is_set():
                return False
            # Without this JetStream would redeliver the batch to another indexer.
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        return True


async def indexed_since(sink: Sink, task: UrlTask) -> bool:
    """Whether ``task``'s page is in ``sink``, fetched after the task was published."""
    page = await sink.get(task.id)
    return page is not None and page.fetched_at >= task.published_at


async def serve(
    settings: Settings, stop: asyncio.Event, sink: Sink, telemetry: Telemetry | None = None
) -> int:
    """Run one indexer until ``stop``; returns the number of documents it indexed."""
    async with nats_session(settings, name="fleet-indexer") as session:
        attempt = 0
        while not stop.is_set():
            try:
                await sink.open()
                break
            except SinkUnavailable as exc:
                attempt += 1
                delay = backoff_delay(attempt, 0.5, settings.sink_retry_max_s)
                log.warning("sink unavailable at start (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        frontier = Frontier(session.nc, session.js, settings)
        indexer = Indexer(session.js, sink, settings, telemetry=telemetry, frontier=frontier)
        # The indexer is the one role every deployment runs, workers or not: it sweeps.
        sweeper = Sweeper(
            session.nc,
            session.js,
            Settler(session.js, settings, stage="worker", max_deliver=settings.max_deliver),
            settings,
            on_dead_letter=telemetry.dead_lettered if telemetry is not None else None,
            before_delete=frontier.count_dead_letter,
            indexed=functools.partial(indexed_since, sink),
        )
        sweeping = asyncio.create_task(sweeper.run(stop), name="sweep")
        try:
            await indexer.run(stop)
        finally:
            # Cut short mid-sweep is harmless: a dead letter's dedup id holds on the retry.
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
            await frontier.close()
        return indexer.indexed
