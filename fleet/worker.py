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
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleet.crawl import CrawlCoordinator, CrawlWork
from fleet.disposition import Settler
from fleet.errors import BadMessage, HttpStatusError, RenderUnavailable, TransientError
from fleet.messages import Page, Skipped, UrlTask, fit_page, url_task_decoder
from fleet.nats.acks import FastAcks
from fleet.nats.frontier import Frontier
from fleet.nats.hosts import KvHostSlots, KvRobotsCache, hosts_bucket, robots_bucket
from fleet.nats.kv import KvDecisionStore, render_bucket, render_samples_bucket
from fleet.nats.session import nats_session
from fleet.nats.streams import WORKERS_CONSUMER, pull
from fleet.parking import Parked, Parking
from fleet.scrape.fetch import Fetcher
from fleet.scrape.politeness import Go, Outcome, Politeness, Skip, Wait
from fleet.scrape.proxy import GuardedProxy
from fleet.scrape.render.policy import RenderPolicy
from fleet.scrape.render.pool import BrowserPool
from fleet.scrape.robots import Robots
from fleet.scrape.scraper import Scraper
from fleet.settings import Settings
from fleet.telemetry import Telemetry

log = logging.getLogger(__name__)


# Room for headers and the JSON envelope when fitting a page under max_payload.
PAYLOAD_HEADROOM = 4096


MAX_FETCH_BATCH = 64
# How long a result's PubAck may take (JetStream's own publish waits 5 s by default).
RESULT_ACK_TIMEOUT_S = 5.0

# Pull waits while URLs are parked: short, so the parked ones start on time.
PARKED_PULL_WAIT_MIN_S = 0.01
PARKED_PULL_WAIT_MAX_S = 0.1


class Worker:
    """Pulls URL tasks, holds them for politeness where needed, scrapes them, publishes
    each page to the results stream, then settles.

    At most ``worker_concurrency`` URLs are being fetched at once (more may be parked,
    waiting for their host); the URL is acked only after the page's PubAck, so a crash
    loses nothing. ``processed`` counts the pages published.
    """

    def __init__(
        self,
        js: JetStreamContext,
        scraper: Scraper,
        settings: Settings,
        *,
        max_payload: int,
        on_page: Callable[[Page], None] | None = None,
        telemetry: Telemetry | None = None,
        politeness: Politeness | None = None,
        crawl: CrawlWork | None = None,
        results: FastAcks | None = None,
        nc: NATS | None = None,
    ) -> None:
        self._js = js
        # For the consumer's leader elections (see `term`); None: not watched.
        self._nc = nc
        self._elections = 0
        # Result publishes with cheap PubAcks (fleet/nats/acks.py); None: JetStream's own.
        self._results = results
        self._telemetry = telemetry or Telemetry.disabled()
        self._scraper = scraper
        self._settings = settings
        self._max_payload = max_payload - PAYLOAD_HEADROOM
        self._settler = Settler(js, settings, stage="worker", max_deliver=settings.max_deliver)
        self._inflight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self._on_page = on_page
        self._politeness = politeness
        self._parking = Parking(settings.worker_parked_max)
        self._crawl = crawl
        self.processed = 0
        self.skipped = 0
        self.deferred = 0
        self.stale = 0  # parked copies dropped: another delivery had settled their URL

    @property
    def term(self) -> int:
        """Consumer leader elections seen plus this connection's reconnects.

        A new leader of the workers' consumer may not know of the last deliveries of the
        old one and deliver those URLs again; a reconnect may have missed an election's
        advisory. A parked copy from an earlier term is looked up in the stream before it
        is fetched (``_still_queued``).
        """
        reconnects = int(self._nc.stats["reconnects"]) if self._nc is not None else 0
        return self._elections + reconnects

    @property
    def parked(self) -> int:
        """URLs held right now for their host's turn."""
        return len(self._parking)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain.

        In-flight URLs get ``drain_timeout_s`` to finish; those still running are cancelled and
        handed back for immediate redelivery to another worker.
        """
        sub = await self._js.pull_subscribe_bind(
            durable=WORKERS_CONSUMER, stream=self._settings.urls_stream
        )
        elections = await self._watch_elections()
        heartbeat = asyncio.create_task(self._heartbeat())
        stopping = asyncio.create_task(stop.wait())
        concurrency = self._settings.worker_concurrency
        try:
            while not stop.is_set():
                self._start_due()
                free = concurrency - len(self._inflight)
                # Each new URL may have to park: take no more than there is room for, so
                # a full parking means "busy at the hosts' pace", not churn through the
                # stream. (A parking of 0 parks nothing: every wait is deferred.)
                room = self._parking.room()
                want = min(free, MAX_FETCH_BATCH, free if room is None else room)
                if want <= 0:
                    # Full: wait for a slot, a parked URL's turn, or SIGTERM (then drain).
                    wake = self._parking.next_wake() if free > 0 else None
                    await asyncio.wait(
                        {*self._inflight, stopping},
                        timeout=None if wake is None else max(0.005, wake - time.time()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    continue
                wait_s = 1.0
                if self._parking:
                    # Parked URLs fall due while we wait for new ones: look again soon.
                    wake = self._parking.next_wake()
                    until = PARKED_PULL_WAIT_MAX_S if wake is None else wake - time.time()
                    wait_s = min(PARKED_PULL_WAIT_MAX_S, max(PARKED_PULL_WAIT_MIN_S, until))
                # Ask for every free slot at once, so one pull request brings a batch.
                msgs = await pull(
                    sub,
                    want,
                    stop,
                    stream=self._settings.urls_stream,
                    wait_s=wait_s,
                )
                for msg in msgs:
                    self._spawn(self._handle(msg), msg)
        finally:
            await self._drain()
            heartbeat.cancel()
            if elections is not None:
                with contextlib.suppress(Exception):
                    await elections.unsubscribe()
            stopping.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _watch_elections(self) -> Subscription | None:
        if self._nc is None:
            return None
        s = self._settings
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{s.urls_stream}.{WORKERS_CONSUMER}"

        async def elected(_msg: Msg) -> None:
            self._elections += 1

        return await self._nc.subscribe(subject, cb=elected)

    def _spawn(self, coro: Coroutine[Any, Any, None], msg: Msg) -> None:
        task = asyncio.create_task(coro)
        self._inflight[task] = (msg, time.monotonic())
        task.add_done_callback(lambda t: self._inflight.pop(t, None))

    def _start_due(self) -> None:
        """Give free fetch slots to parked URLs whose host's turn has come (before new ones)."""
        free = self._settings.worker_concurrency - len(self._inflight)
        if free <= 0 or not self._parking:
            return
        for origin, item in self._parking.due(time.time(), free):
            self._spawn(self._admit_parked(origin, item), item.msg)
        self._telemetry.parked(len(self._parking))

    async def _drain(self) -> None:
        """Stop pulling; parked URLs go back to the stream (due when they were), in-flight
        URLs get the grace period, then what is left is nak'ed."""
        await self._hand_back_parked()
        if not self._inflight:
            return
        log.info("draining %d in-flight URL(s)", len(self._inflight))
        deadline = time.monotonic() + self._settings.drain_timeout_s
        # In-flight admissions may still park or defer URLs: wait for those too.
        while self._inflight and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._inflight), timeout=remaining)
            await self._hand_back_parked()
        left = set(self._inflight)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)

    async def _hand_back_parked(self) -> None:
        parked = self._parking.take_all()
        if parked:
            log.info("handing back %d parked URL(s)", len(parked))
            await asyncio.gather(
                *(self._defer(item, wake) for _, item, wake in parked), return_exceptions=True
            )

    async def _heartbeat(self) -> None:
        """Tell JetStream slow pages (and parked URLs) are still being worked on: one
        ticker, not one per message.

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
            for item in self._parking.items():
                if now - item.beat_at >= interval:
                    item.beat_at = now
                    with contextlib.suppress(Exception):
                        await item.msg.in_progress()

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        delivered = meta.num_delivered or 1
        seq = meta.sequence.stream if meta.sequence else 0
        try:
            task = url_task_decoder.decode(msg.data)
        except Exception as exc:
            bad = BadMessage(f"undecodable URL message: {exc}")
            await self._process(msg, task=None, bad=bad, attempt=delivered, seq=seq, go=None)
            return
        prior = task.attempts + delivered - 1
        if self._politeness is None:
            await self._process(msg, task=task, bad=None, attempt=prior + 1, seq=seq, go=None)
            return
        item = Parked(
            msg=msg, task=task, prior_attempts=prior, seq=seq, why="queued", term=self.term
        )
        origin = self._politeness.origin(task.url)
        if self._parking.has(origin):
            # Others of this host wait here already: behind them, without asking.
            self._park_or_defer(origin, item, self._parking.wake_at(origin), front=False)
            return
        await self._admit(origin, item, parked=False)

    async def _admit_parked(self, origin: str, item: Parked) -> None:
        if item.term != self.term and not await self._still_queued(item.seq):
            self._drop_stale(item)
            self._parking.resume(origin, time.time())  # its successor asks now
            return
        try:
            await self._admit(origin, item, parked=True)
        finally:
            if self._parking.has(origin) and not self._parking.wake_at(origin):
                # The head never came back (a bug, or cancelled): its successors must not
                # wait for it for ever.
                self._parking.resume(origin, time.time() + 1.0)

    async def _admit(self, origin: str, item: Parked, *, parked: bool) -> None:
        assert self._politeness is not None
        admission = await self._politeness.admit(item.task.url, origin)
        if isinstance(admission, Wait):
            item.why = admission.why
            self._park_or_defer(origin, item, admission.until, front=parked)
            return
        if parked:
            # Its successor asks next, when the host's turn may have come.
            self._parking.resume(origin, self._politeness.ready_at(origin))
        if isinstance(admission, Skip):
            await self._skip(item, admission)
            return
        await self._process(
            item.msg,
            task=item.task,
            bad=None,
            attempt=item.prior_attempts + 1,
            seq=item.seq,
            go=admission,
        )

    def _park_or_defer(self, origin: str, item: Parked, until: float, *, front: bool) -> None:
        assert self._politeness is not None
        now = time.time()
        interval = self._politeness.interval_s(origin)
        ahead = 0 if front else self._parking.queued(origin)
        eta = max(until, now) + ahead * interval
        room = front or len(self._parking) < self._parking.limit
        if room and eta - now <= self._settings.worker_park_max_s:
            self._parking.push(origin, item, wake_at=until, front=front)
            self._telemetry.polite("parked", item.why)
            return
        if front:
            # The head goes: its successor (if any) asks at the head's time.
            self._parking.resume(origin, until)
        due = self._parking.defer_slot(origin, eta, interval)
        self._telemetry.polite("deferred", item.why)
        self._spawn(self._defer(item, due), item.msg)

    async def _defer(self, item: Parked, due: float) -> None:
        if not await self._still_queued(item.seq):
            # Handing a stale copy back would queue its URL a second time.
            self._drop_stale(item)
            return
        if await self._settler.defer(
            item.msg, item.task, until=due, attempts=item.prior_attempts, seq=item.seq
        ):
            self.deferred += 1

    def _drop_stale(self, item: Parked) -> None:
        """Forget a parked copy whose URL another delivery settled (the consumer's leader
        changed, or its heartbeats were lost, and it was delivered again): no fetch, no
        ack (the server has the other one's)."""
        log.info("dropping a parked copy of %s settled by another delivery", item.task.url)
        self.stale += 1

    async def _still_queued(self, seq: int) -> bool:
        """Whether the URL message at ``seq`` is still in the work-queue stream (an ack or
        term by any delivery removes it); True when the server cannot say: a URL queued
        twice beats one lost."""
        try:
            await self._js.get_msg(self._settings.urls_stream, seq)
        except NotFoundError:
            return False
        except Exception as exc:
            log.debug("could not look up URL message %d: %s", seq, exc)
        return True

    async def _skip(self, item: Parked, skip: Skip) -> None:
        record = Skipped(
            url=item.task.url,
            id=item.task.id,
            reason=skip.reason,
            detail=skip.detail,
            skipped_at=time.time(),
            source=item.task.source,
        )
        if item.task.crawl is not None and self._crawl is not None:
            # A crawl counts its skipped URLs (and records them) itself, or it never settles.
            try:
                await self._crawl.skip(item.task, skip.reason, skip.detail)
            except Exception as exc:
                log.warning("could not record skipped %s: %s", record.url, exc)
                await self._settler.release(item.msg, self._settings.backoff_base_s)
                return
            await self._settler.done(item.msg)
        elif not await self._settler.skip(item.msg, record, seq=item.seq):
            return
        self.skipped += 1
        self._telemetry.polite("skipped", skip.reason)

    async def _process(
        self,
        msg: Msg,
        *,
        task: UrlTask | None,
        bad: BaseException | None,
        attempt: int,
        seq: int,
        go: Go | None,
    ) -> None:
        """Scrape (the host's slot is held, if any), publish the page, settle the message."""
        with self._telemetry.processing(msg, stage="worker", attempt=attempt, seq=seq) as hook:
            url, item_id = "?", "?"
            error: BaseException | None = bad
            outcome = Outcome()
            try:
                if task is not None:
                    url, item_id = task.url, task.id
                    hook.set_url(url)
                    if task.crawl is not None and self._crawl is not None:
                        # A deferred task comes back as a new message: still a redelivery.
                        page = await self._crawl.handle(
                            task,
                            attempt=attempt,
                            redelivered=attempt > 1 or task.attempts > 0,
                            publish=lambda p: self._publish(p, seq),
                        )
                    else:
                        page = await self._scraper.scrape(task, attempt)
                        await self._publish(page, seq)
                    if page is not None:
                        outcome = Outcome(status=page.status)
                        self.processed += 1
                        if self._on_page is not None:
                            self._on_page(page)
            except asyncio.CancelledError:
                # Drain ran out of time: hand the URL back at once for another worker.
                await self._settler.release(msg)
                raise
            except Exception as exc:
                error = exc
                if isinstance(exc, HttpStatusError):
                    outcome = Outcome(status=exc.status, retry_after_s=exc.retry_after_s)
            finally:
                if go is not None and self._politeness is not None:
                    await asyncio.shield(self._politeness.done(go, outcome))
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
                stream = self._settings.results_stream
                if self._results is None:
                    await self._js.publish(subject, payload, stream=stream, headers=headers)
                else:
                    acked = await self._results.publish_async(
                        subject, payload, stream=stream, headers=headers
                    )
                    await asyncio.wait_for(acked, RESULT_ACK_TIMEOUT_S)
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


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    telemetry: Telemetry | None = None,
    *,
    environ: Mapping[str, str],
) -> int:
    """Run one worker process until ``stop``; returns the number of pages it published.

    ``environ`` is the browser's environment (the process's, from the CLI)."""
    async with contextlib.AsyncExitStack() as stack:
        # Before NATS: `--render always` without a browser fails at start, with the fix.
        pool = await _start_browser(settings, stack, telemetry, environ)
        return await _serve(settings, stop, telemetry, pool)


async def _start_browser(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    telemetry: Telemetry | None,
    environ: Mapping[str, str],
) -> BrowserPool | None:
    """The worker's browser pool, or None (render=never, or auto without a browser)."""
    if settings.render == "never":
        return None
    # The browser's own fetcher (its connection pool apart from the pages'), behind the
    # proxy every browser connection goes through.
    fetcher = await stack.enter_async_context(Fetcher(settings))
    proxy = await stack.enter_async_context(GuardedProxy(settings, fetcher))
    pool = BrowserPool(settings, proxy, environ=environ, telemetry=telemetry)
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


def politeness_needed(settings: Settings) -> bool:
    """False when nothing is limited: robots ignored, no limits, no rule that sets any."""
    if settings.robots == "obey" or settings.host_concurrency or settings.host_delay_s:
        return True
    return any(r.robots == "obey" or r.concurrency or r.delay_s for r in settings.host_rule_list)


async def politeness_for(
    js: JetStreamContext, settings: Settings, fetcher: Fetcher, acks: FastAcks | None = None
) -> Politeness | None:
    """The worker's politeness gate over the fleet-wide KV buckets (None: nothing limited);
    with ``acks``, host-state writes go through them (``KvHostSlots``)."""
    if not politeness_needed(settings):
        return None
    slots = KvHostSlots(await hosts_bucket(js, settings), acks=acks, bucket=settings.hosts_bucket)
    robots = Robots(
        KvRobotsCache(js, await robots_bucket(js, settings), settings.robots_bucket),
        fetcher,
        settings,
    )
    return Politeness(slots, robots, settings)


async def _serve(
    settings: Settings, stop: asyncio.Event, telemetry: Telemetry | None, pool: BrowserPool | None
) -> int:
    async with nats_session(settings, name="fleet-worker") as session:
        nc, js = session.nc, session.js
        policy = None
        if settings.render == "auto" and pool is not None:
            store = KvDecisionStore(
                await render_bucket(js, settings),
                await render_samples_bucket(js, settings),
                slots=settings.render_samples,
                # A sample's claim outlives its render (a render takes render_timeout_s at
                # most); older, its worker died and another takes the slot over.
                stale_s=2 * settings.render_timeout_s,
            )
            policy = RenderPolicy(
                store,
                samples=settings.render_samples,
                hold_s=settings.render_learn_hold_s,
                # Held pages keep their slots: the others go on meanwhile.
                max_held=max(1, settings.worker_concurrency // 4),
            )
        async with Fetcher(settings) as fetcher, FastAcks(nc, js) as results:
            scraper = Scraper(fetcher, settings, telemetry=telemetry, renderer=pool, policy=policy)
            frontier = Frontier(nc, js, settings)
            crawl = CrawlWork(frontier, scraper, fetcher)
            worker = Worker(
                js,
                scraper,
                settings,
                max_payload=nc.max_payload,
                telemetry=telemetry,
                politeness=await politeness_for(js, settings, fetcher, results),
                crawl=crawl,
                results=results,
                nc=nc,
            )
            coordinating = asyncio.create_task(CrawlCoordinator(frontier).run(stop))
            try:
                await worker.run(stop)
            finally:
                coordinating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await coordinating
                await frontier.close()
            return worker.processed
