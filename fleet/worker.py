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
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from fleet.crawl import CrawlCoordinator, CrawlWork
from fleet.disposition import MaxDeliveriesReaper, Settler
from fleet.errors import BadMessage, RenderUnavailable, TransientError
from fleet.messages import Page, page_encoder, url_task_decoder
from fleet.nats.frontier import Frontier
from fleet.nats.kv import KvDecisionStore, render_bucket
from fleet.nats.session import nats_session
from fleet.nats.streams import WORKERS_CONSUMER, pull
from fleet.scrape.fetch import Fetcher
from fleet.scrape.proxy import GuardedProxy
from fleet.scrape.render.chromium import cap_driver_heap
from fleet.scrape.render.policy import RenderPolicy
from fleet.scrape.render.pool import BrowserPool
from fleet.scrape.scraper import Scraper
from fleet.settings import Settings
from fleet.telemetry import Telemetry

log = logging.getLogger(__name__)


# Room for headers and the JSON envelope when fitting a page under max_payload.
PAYLOAD_HEADROOM = 4096


MAX_FETCH_BATCH = 64


def fit_page(page: Page, max_bytes: int) -> bytes:
    """Encode a page so it fits in ``max_bytes``: cut text (marked), then links. Never fails."""
    data = page_encoder.encode(page)
    if len(data) <= max_bytes:
        return data
    bare = _replace(page, text="", text_truncated=True)
    # Pathological link lists: halve them until the page without text fits.
    while bare.links and len(page_encoder.encode(bare)) > max_bytes:
        bare = _replace(bare, links=bare.links[: len(bare.links) // 2])
    if len(page_encoder.encode(bare)) > max_bytes:
        bare = _replace(bare, headings=[], description=bare.description[:500])
    text = page.text.encode()
    keep = max(0, max_bytes - len(page_encoder.encode(bare)))
    while True:
        data = page_encoder.encode(_replace(bare, text=text[:keep].decode(errors="ignore")))
        if len(data) <= max_bytes or keep == 0:
            return data
        # JSON escaping (quotes, control characters) made it longer: cut the excess.
        keep = max(0, keep - (len(data) - max_bytes) - 16)


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
        telemetry: Telemetry | None = None,
        crawl: CrawlWork | None = None,
    ) -> None:
        self._js = js
        self._telemetry = telemetry or Telemetry.disabled()
        self._scraper = scraper
        self._settings = settings
        self._max_payload = max_payload - PAYLOAD_HEADROOM
        self._settler = Settler(js, settings, stage="worker", max_deliver=settings.max_deliver)
        self._inflight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self._on_page = on_page
        self._crawl = crawl
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=WORKERS_CONSUMER, stream=self._settings.urls_stream
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        stopping = asyncio.create_task(stop.wait())
        concurrency = self._settings.worker_concurrency
        try:
            while not stop.is_set():
                free = concurrency - len(self._inflight)
                if free <= 0:
                    # Full: wait for a slot, or for SIGTERM (then drain at once).
                    await asyncio.wait(
                        {*self._inflight, stopping}, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                # Ask for every free slot at once, so one pull request brings a batch.
                msgs = await pull(
                    sub, min(free, MAX_FETCH_BATCH), stop, stream=self._settings.urls_stream
                )
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg))
                    self._inflight[task] = (msg, time.monotonic())
                    task.add_done_callback(lambda t: self._inflight.pop(t, None))
        finally:
            await self._drain()
            heartbeat.cancel()
            stopping.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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

    async def _heartbeat(self) -> None:
        """Tell JetStream slow pages are still being worked on (one ticker, not one per msg).

        Runs until cancelled, i.e. also through the drain after SIGTERM.
        """
        interval = max(0.5, self._settings.ack_wait_s / 3)
        while True:
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
        with self._telemetry.processing(msg, stage="worker", attempt=attempt, seq=seq) as hook:
            url, item_id = "?", "?"
            error: BaseException | None = None
            try:
                try:
                    task = url_task_decoder.decode(msg.data)
                except Exception as exc:
                    raise BadMessage(f"undecodable URL message: {exc}") from None
                url, item_id = task.url, task.id
                hook.set_url(url)
                if task.crawl is not None and self._crawl is not None:
                    page = await self._crawl.handle(
                        task,
                        attempt=attempt,
                        redelivered=attempt > 1,
                        publish=lambda p: self._publish(p, seq),
                    )
                else:
                    page = await self._scraper.scrape(task, attempt)
                    await self._publish(page, seq)
                if page is not None:
                    self.processed += 1
                    if self._on_page is not None:
                        self._on_page(page)
            except asyncio.CancelledError:
                # Drain ran out of time: hand the URL back at once for another worker.
                await self._settler.release(msg)
                raise
            except Exception as exc:
                error = exc
            decision = await self._settler.settle(
                msg,
                error,
                attempt=attempt,
                url=url,
                item_id=item_id,
                seq=seq,
                before_term=self._crawl_dead_letter(msg) if error is not None else None,
            )
            hook.settled(
                error,
                action=decision.action.value,
                reason=decision.reason,
                dead_letter=decision.dead_letter,
            )

    async def _publish(self, page: Page, seq: int) -> None:
        """Publish a page's result; acked by JetStream before the URL is."""
        payload = fit_page(page, self._max_payload)
        # Same id on a redelivery of the same message: a result is never doubled.
        msg_id = f"{page.id}-{seq}"
        headers = {"Nats-Msg-Id": msg_id}
        subject = self._settings.results_subject
        with self._telemetry.publishing(subject, headers, message_id=msg_id):
            try:
                await self._js.publish(
                    subject, payload, stream=self._settings.results_stream, headers=headers
                )
            except Exception as exc:
                # NATS trouble, not the page's fault: retry like any transient error.
                raise TransientError(
                    f"could not publish the result of {page.url}: {exc!r}",
                    reason="result_publish_failed",
                ) from exc

    def _crawl_dead_letter(self, msg: Msg) -> Callable[[], Awaitable[None]] | None:
        """For a crawl task: count it dead before its term."""
        crawl = self._crawl
        if crawl is None:
            return None
        try:
            task = url_task_decoder.decode(msg.data)
        except Exception:
            return None
        if task.crawl is None:
            return None
        return lambda: crawl.dead_lettered(task)


async def serve(settings: Settings, stop: asyncio.Event, telemetry: Telemetry | None = None) -> int:
    """Run one worker process until ``stop``; returns the number of pages it published."""
    async with contextlib.AsyncExitStack() as stack:
        # Before NATS: `--render always` without a browser fails at start, with the fix.
        pool = await _start_browser(settings, stack, telemetry)
        return await _serve(settings, stop, telemetry, pool)


async def _start_browser(
    settings: Settings, stack: contextlib.AsyncExitStack, telemetry: Telemetry | None
) -> BrowserPool | None:
    """The worker's browser pool, or None (render=never, or auto without a browser)."""
    if settings.render == "never":
        return None
    cap_driver_heap(settings)  # before Playwright's driver starts: it inherits the env
    # The browser's own fetcher (its connection pool apart from the pages'), behind the
    # proxy every browser connection goes through.
    fetcher = await stack.enter_async_context(Fetcher(settings))
    proxy = await stack.enter_async_context(GuardedProxy(settings, fetcher))
    pool = BrowserPool(settings, proxy, telemetry=telemetry)
    try:
        # auto: the browser starts with the first page that needs it (most pages do not).
        await pool.start(launch=settings.render == "always")
    except RenderUnavailable as exc:
        if settings.render == "always":
            raise
        log.warning("%s; pages that need rendering get the HTTP result", exc)
        return None
    stack.push_async_callback(pool.close)
    return pool


async def _serve(
    settings: Settings, stop: asyncio.Event, telemetry: Telemetry | None, pool: BrowserPool | None
) -> int:
    async with nats_session(settings, name="fleet-worker") as session:
        nc, js = session.nc, session.js
        policy = None
        if settings.render == "auto":
            policy = RenderPolicy(KvDecisionStore(await render_bucket(js, settings)))
        async with Fetcher(settings) as fetcher:
            scraper = Scraper(fetcher, settings, telemetry=telemetry, renderer=pool, policy=policy)
            frontier = Frontier(nc, js, settings)
            crawl = CrawlWork(frontier, scraper, fetcher)
            worker = Worker(
                js,
                scraper,
                settings,
                max_payload=nc.max_payload,
                telemetry=telemetry,
                crawl=crawl,
            )
            reaper = MaxDeliveriesReaper(
                nc,
                js,
                Settler(js, settings, stage="worker", max_deliver=settings.max_deliver),
                settings,
                on_dead_letter=telemetry.dead_lettered if telemetry is not None else None,
                before_delete=crawl.dead_lettered,
            )
            await reaper.start()
            coordinating = asyncio.create_task(CrawlCoordinator(frontier).run(stop))
            try:
                await worker.run(stop)
            finally:
                await reaper.stop()
                coordinating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await coordinating
                await frontier.close()
            return worker.processed
