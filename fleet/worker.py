"""Worker role: pull URLs, scrape, publish the page, and only then ack.

Competing consumers: every worker process binds the same durable pull consumer, so any
number of them share the queue. Concurrency is bounded by ``worker_concurrency``; the
worker only asks JetStream for as many messages as it has free slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from fleet import extract as extraction
from fleet.disposition import Settler
from fleet.errors import BadMessage
from fleet.fetch import Fetcher, FetchResult
from fleet.messages import Page, UrlTask, page_encoder, url_task_decoder
from fleet.settings import Settings
from fleet.streams import WORKERS_CONSUMER, connect, ensure_topology
from fleet.urls import url_id

log = logging.getLogger(__name__)

# Room for headers and the JSON envelope when fitting a page under max_payload.
PAYLOAD_HEADROOM = 4096
MAX_FETCH_BATCH = 64


class Fetching(Protocol):
    async def fetch(self, url: str) -> FetchResult: ...


class Scraper:
    """Fetch then extract one URL into a Page; knows nothing of NATS."""

    def __init__(self, fetcher: Fetching, settings: Settings) -> None:
        self._fetcher = fetcher
        self._settings = settings

    async def scrape(self, task: UrlTask, attempt: int) -> Page:
        started = time.perf_counter()
        fetched = await self._fetcher.fetch(task.url)
        fetch_ms = (time.perf_counter() - started) * 1000
        ex = extraction.extract(
            fetched.body,
            final_url=fetched.final_url,
            content_type=fetched.content_type,
            charset=fetched.charset,
            max_links=self._settings.max_links,
        )
        return Page(
            id=url_id(ex.canonical_url),
            url=task.url,
            final_url=fetched.final_url,
            canonical_url=ex.canonical_url,
            status=fetched.status,
            content_type=fetched.content_type,
            title=ex.title,
            description=ex.description,
            headings=list(ex.headings),
            text=ex.text,
            lang=ex.lang,
            links=list(ex.links),
            content_hash=ex.content_hash,
            fetched_at=time.time(),
            fetch_ms=round(fetch_ms, 1),
            via="http",
            attempt=attempt,
        )


def fit_page(page: Page, max_bytes: int) -> bytes:
    """Encode a page so it fits in ``max_bytes``: cut text (marked), then links. Never fails."""
    data = page_encoder.encode(page)
    if len(data) <= max_bytes:
        return data
    overflow = len(data) - max_bytes
    text = page.text.encode()
    # JSON escaping can make the encoded text longer than its UTF-8; cut a margin more.
    keep = max(0, len(text) - overflow * 2 - 1024)
    page = _replace(page, text=text[:keep].decode(errors="ignore"), text_truncated=True)
    data = page_encoder.encode(page)
    while len(data) > max_bytes and page.links:
        page = _replace(page, links=page.links[: len(page.links) // 2])
        data = page_encoder.encode(page)
    if len(data) > max_bytes:
        page = _replace(page, headings=[], description=page.description[:500], text="")
        data = page_encoder.encode(page)
    return data


def _replace(page: Page, **changes: object) -> Page:
    return msgspec.structs.replace(page, **changes)


class Worker:
    def __init__(
        self,
        js: JetStreamContext,
        scraper: Scraper,
        settings: Settings,
        *,
        max_payload: int,
        on_page: Callable[[Page], None] | None = None,
    ) -> None:
        self._js = js
        self._scraper = scraper
        self._settings = settings
        self._max_payload = max_payload - PAYLOAD_HEADROOM
        self._settler = Settler(js, settings, stage="worker", max_deliver=settings.max_deliver)
        self._inflight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self._on_page = on_page
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=WORKERS_CONSUMER, stream=self._settings.urls_stream
        )
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        concurrency = self._settings.worker_concurrency
        slots = asyncio.Semaphore(concurrency)

        def finished(task: asyncio.Task[None]) -> None:
            self._inflight.pop(task, None)
            slots.release()

        try:
            while not stop.is_set():
                await slots.acquire()
                if stop.is_set():
                    # Stopped while waiting for a slot: pull nothing more.
                    slots.release()
                    break
                free = 1
                # Take every slot that is free right now, so one fetch asks for a batch.
                while free < min(concurrency, MAX_FETCH_BATCH) and not slots.locked():
                    await slots.acquire()
                    free += 1
                msgs = await self._fetch(sub, free, stop)
                for _ in range(free - len(msgs)):
                    slots.release()
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg))
                    self._inflight[task] = (msg, time.monotonic())
                    task.add_done_callback(finished)
        finally:
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, n: int, stop: asyncio.Event
    ) -> list[Msg]:
        try:
            return await sub.fetch(n, timeout=1.0)
        except (FetchTimeoutError, NatsTimeoutError, TimeoutError):
            return []
        except ConnectionClosedError:
            stop.set()
            return []
        except Exception as exc:
            # Disconnected or server restarting: wait a little and ask again.
            log.warning("fetch from %s failed: %s", self._settings.urls_stream, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            return []

    async def _drain(self) -> None:
        """Stop pulling; give in-flight URLs the grace period, then nak what is left."""
        if not self._inflight:
            return
        log.info("draining %d in-flight URL(s)", len(self._inflight))
        _, left = await asyncio.wait(set(self._inflight), timeout=self._settings.drain_timeout_s)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Tell JetStream slow pages are still being worked on (one ticker, not one per msg)."""
        interval = max(0.5, self._settings.ack_wait_s / 3)
        while not stop.is_set():
            await asyncio.sleep(interval)
            now = time.monotonic()
            for msg, started in list(self._inflight.values()):
                if now - started >= interval:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        attempt = meta.num_delivered or 1
        seq = meta.sequence.stream if meta.sequence else 0
        url, item_id = "?", "?"
        error: BaseException | None = None
        try:
            try:
                task = url_task_decoder.decode(msg.data)
            except Exception as exc:
                raise BadMessage(f"undecodable URL message: {exc}") from None
            url, item_id = task.url, task.id
            page = await self._scraper.scrape(task, attempt)
            payload = fit_page(page, self._max_payload)
            await self._js.publish(
                self._settings.results_subject,
                payload,
                stream=self._settings.results_stream,
                # Same id on a redelivery of the same message: a result is never doubled.
                headers={"Nats-Msg-Id": f"{page.id}-{seq}"},
            )
            self.processed += 1
            if self._on_page is not None:
                self._on_page(page)
        except asyncio.CancelledError:
            # Drain ran out of time: hand the URL back at once for another worker.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:
            error = exc
        await self._settler.settle(msg, error, attempt=attempt, url=url, item_id=item_id, seq=seq)


async def serve(settings: Settings, stop: asyncio.Event) -> int:
    """Run one worker process until ``stop``; returns the number of pages it published."""
    nc = await connect(settings, name="fleet-worker")
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        async with Fetcher(settings) as fetcher:
            worker = Worker(js, Scraper(fetcher, settings), settings, max_payload=nc.max_payload)
            await worker.run(stop)
            return worker.processed
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
