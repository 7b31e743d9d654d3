"""The sweep: dead-letters the URLs the server will never deliver again.

A URL whose last allowed delivery ends without an ack or a term (its worker killed, stopped
or cut off during it) is not delivered again by the workers' consumer, and a work-queue
stream keeps it for ever: nothing would count it, and `fleet run` would wait for it. The
sweep, run by the indexer every ``sweep_interval_s``, finds such URLs, writes each to the
dead-letter stream (reason ``max_deliveries``, through ``Settler.dead_letter``) and deletes
it from the URLs stream by sequence, so the queue drains.

How a URL is known to be stranded:

- *the consumer's state* (``stranded_upto``): a URL still in the stream, on the workers'
  subject, at or below the consumer's ack floor, is neither in flight nor waiting for a
  redelivery (everything pending lies above the floor); when nothing at all is pending,
  every delivered one is stranded.
- *the server's word*: a URL whose last delivery's AckWait ran out stays counted as pending
  until the server next looks at it, which it does when a pull request arrives. So each
  sweep first sends the consumer a pull request no message fits (``max_bytes`` 1, `probe`):
  the server settles those URLs, delivers nothing, and announces each settled one with a
  MAX_DELIVERIES advisory, which the sweep listens to. That finds a stranded URL while
  other URLs are still pending (the ack floor stays below the lowest stranded one until
  nothing is pending) and with every worker stopped.

A URL is dead-lettered only when two sweeps in a row found it still in the stream (the
second comes at most ``CONFIRM_S`` after the first), so an ack the server is still
applying (a cluster proposes the delete) is never taken for one.
Idempotent by sequence: the dead letter's ``Nats-Msg-Id`` is the one the worker's own
settle would use for that message, and a URL deleted meanwhile is skipped, so two sweeps
at once (two indexers) write one dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo, RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from fleet.disposition import Settler
from fleet.messages import DeadLetter, UrlTask, trace_headers, url_task_decoder
from fleet.nats.streams import WORKERS_CONSUMER
from fleet.settings import Settings

log = logging.getLogger(__name__)

# Stranded URLs looked at per sweep: bounds the memory and the time of one sweep; more
# are left for the next ones.
SWEEP_BATCH: Final = 500

# How long the probe's pull request waits (the server answers it at once or at expiry).
PROBE_EXPIRES_S: Final = 0.25

# JetStream's error code when a message to delete is not there (any more).
_NO_MESSAGE_FOUND: Final = 10057

# The sweep after one that found stranded URLs comes this soon (if the interval is
# longer): enough for an ack the server is still applying to have removed its URL.
CONFIRM_S: Final = 5.0

# Advisories remembered between two sweeps (more are found from the state later).
HINTS_MAX: Final = 10_000


def max_deliveries_subject(settings: Settings) -> str:
    """The server's MAX_DELIVERIES advisory subject of the workers' consumer."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{settings.urls_stream}.{WORKERS_CONSUMER}"


class StreamState(Protocol):
    """The part of JetStream the sweep reads and changes (nats-py's JetStreamContext)."""

    async def consumer_info(
        self,
        stream: str,
        consumer: str,
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors JetStreamContext
    ) -> ConsumerInfo:
        """The consumer's configuration and delivery state, from its leader."""

    async def get_msg(
        self,
        stream_name: str,
        seq: int | None = None,
        subject: str | None = None,
        direct: bool | None = False,
        next: bool | None = False,
    ) -> RawStreamMsg:
        """With ``next``: the first message at or after ``seq`` on ``subject``."""

    async def delete_msg(self, stream_name: str, seq: int) -> bool:
        """Remove one message by sequence."""


class Unsubscribe(Protocol):
    """A core NATS subscription (nats-py's Subscription)."""

    async def unsubscribe(self, limit: int = 0) -> None:
        """Stop receiving."""


class CoreNats(Protocol):
    """Core NATS requests and subscriptions (nats-py's Client): the probe and advisories."""

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,  # noqa: ASYNC109 - mirrors nats.aio.client.Client
    ) -> object:
        """Send ``payload`` and return the first reply."""

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> Unsubscribe:
        """Call ``cb`` with every message on ``subject``."""


def stranded_upto(info: ConsumerInfo) -> int:
    """The highest stream sequence at or below which every URL still in the stream is
    stranded, from the workers' consumer state (0: none can be).

    Nothing pending: every delivered URL. Otherwise those at or below the ack floor: the
    server keeps every pending message above it, so a URL below it that is still in the
    work-queue stream was never acked and will not be delivered again.
    """
    delivered = (info.delivered.stream_seq if info.delivered else 0) or 0
    floor = (info.ack_floor.stream_seq if info.ack_floor else 0) or 0
    return delivered if not info.num_ack_pending else min(floor, delivered)


class Sweeper:
    """Dead-letters stranded URLs every ``sweep_interval_s`` (see the module's docstring).

    ``before_delete`` runs for a decoded task once its dead letter is written and before it
    leaves the stream (a crawl counts it there); ``on_dead_letter`` counts a dead letter
    (stage, reason). ``swept`` counts the URLs this sweeper dead-lettered.

    ``indexed`` (the indexer passes its sink's answer) says whether a task's page was
    stored after the task was published: such a URL was processed and its ack lost (a
    cluster's stream can keep a message acked just before a leader change), so it is
    removed from the stream without a dead letter. ``removed`` counts those.
    """

    def __init__(
        self,
        nc: CoreNats,
        js: StreamState,
        settler: Settler,
        settings: Settings,
        *,
        on_dead_letter: Callable[[str, str], None] | None = None,
        before_delete: Callable[[UrlTask], Awaitable[None]] | None = None,
        indexed: Callable[[UrlTask], Awaitable[bool]] | None = None,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self._nc = nc
        self._js = js
        self._settler = settler
        self._settings = settings
        self._on_dead_letter = on_dead_letter
        self._before_delete = before_delete
        self._indexed = indexed
        self._batch = batch
        # Stranded at the previous sweep: dead-lettered if this one finds them again.
        self._suspects: set[int] = set()
        # Stream sequences the server announced as past max_deliver.
        self._hinted: set[int] = set()
        self.swept = 0
        self.removed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Listen to the advisories, then sweep now and every ``sweep_interval_s`` until
        ``stop``; a failed sweep is logged and the next one tries again."""
        sub = await self.listen()
        try:
            while not stop.is_set():
                try:
                    await self.sweep()
                except NotFoundError:
                    log.debug("no workers' consumer yet: nothing to sweep")
                except Exception as exc:
                    log.warning(
                        "sweep of stranded URLs failed (again in %gs): %s", self.interval, exc
                    )
                # Found some: look again soon rather than a whole interval later.
                wait = min(self.interval, CONFIRM_S) if self._suspects else self.interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def listen(self) -> Unsubscribe:
        """Subscribe to the MAX_DELIVERIES advisories of the workers' consumer; each names
        a URL for the next sweeps to check. Returns the subscription."""

        async def on_advisory(msg: Msg) -> None:
            try:
                seq = int(json.loads(msg.data)["stream_seq"])
            except (KeyError, TypeError, ValueError):
                return
            if len(self._hinted) < HINTS_MAX:
                self._hinted.add(seq)

        return await self._nc.subscribe(max_deliveries_subject(self._settings), cb=on_advisory)

    @property
    def interval(self) -> float:
        """Seconds between two sweeps."""
        return self._settings.sweep_interval_s

    async def sweep(self) -> int:
        """One sweep: dead-letter the URLs found stranded now and at the previous sweep;
        returns how many were dead-lettered."""
        s = self._settings
        info = await self._js.consumer_info(s.urls_stream, WORKERS_CONSUMER)
        if info.num_ack_pending:
            await self.probe()
            info = await self._js.consumer_info(s.urls_stream, WORKERS_CONSUMER)
        found = await self._stranded(stranded_upto(info))
        for seq in sorted(self._hinted - found.keys()):
            raw = await self._url_at(seq)
            if raw is None:
                self._hinted.discard(seq)  # acked, or swept meanwhile
            else:
                found[seq] = raw
        deliveries = info.config.max_deliver or 0
        deliveries = deliveries if deliveries > 0 else s.max_deliver
        done = 0
        for seq in sorted(found.keys() & self._suspects):
            if await self.dead_letter(found[seq], deliveries):
                done += 1
                del found[seq]
                self._hinted.discard(seq)
            # Not written: still a suspect, tried again at the next sweep.
        self._suspects = set(found)
        return done

    async def probe(self) -> None:
        """Make the consumer's leader settle last deliveries whose AckWait ran out.

        The server does that when a pull request arrives; with no worker pulling it would
        keep such a URL counted as pending. This pull request takes nothing: no message fits
        in its ``max_bytes`` of 1, so the server answers 409 and puts the message back,
        without counting a delivery.
        """
        s = self._settings
        request = {"batch": 1, "max_bytes": 1, "expires": int(PROBE_EXPIRES_S * 1e9)}
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.urls_stream}.{WORKERS_CONSUMER}"
        with contextlib.suppress(Exception):  # no answer: the next sweep probes again
            await self._nc.request(subject, json.dumps(request).encode(), PROBE_EXPIRES_S + 2)

    async def _stranded(self, upto: int) -> dict[int, RawStreamMsg]:
        """The URLs still in the stream on the workers' subject, up to sequence ``upto``."""
        s = self._settings
        found: dict[int, RawStreamMsg] = {}
        seq = 1
        while seq <= upto and len(found) < self._batch:
            try:
                raw = await self._js.get_msg(s.urls_stream, seq, subject=s.urls_subject, next=True)
            except NotFoundError:
                break
            if raw.seq is None or raw.seq > upto:
                break
            found[raw.seq] = raw
            seq = raw.seq + 1
        return found

    async def _url_at(self, seq: int) -> RawStreamMsg | None:
        """The URL at stream sequence ``seq``, or None (gone, or not a URL for the workers)."""
        try:
            raw = await self._js.get_msg(self._settings.urls_stream, seq)
        except NotFoundError:
            return None
        return raw if raw.subject == self._settings.urls_subject else None

    async def dead_letter(self, raw: RawStreamMsg, deliveries: int) -> bool:
        """Write the dead letter of the stranded URL ``raw``, then delete it from the stream.

        False (tried again at a later sweep) when the dead letter or the crawl's count could
        not be written; a URL deleted meanwhile (acked, or swept by another) is not an error.
        """
        assert raw.seq is not None
        seq, data = raw.seq, raw.data or b""
        task: UrlTask | None = None
        try:
            task = url_task_decoder.decode(data)
            url, item_id, attempts = task.url, task.id, task.attempts + deliveries
        except Exception:
            url, item_id, attempts = "?", f"seq{seq}", deliveries
        if task is not None and await self._was_indexed(task):
            return await self._remove_processed(task, seq)
        letter = DeadLetter(
            url=url,
            id=item_id,
            stage="worker",
            reason="max_deliveries",
            error="the last allowed delivery ended without an ack (worker crashed or stopped)",
            attempts=attempts,
            failed_at=time.time(),
            payload=data,
            trace_headers=trace_headers(raw.headers),
        )
        if not await self._settler.dead_letter(letter, seq):
            return False
        if task is not None and self._before_delete is not None:
            try:
                await self._before_delete(task)
            except Exception as exc:
                log.warning("could not count the dead letter of %s: %s", url, exc)
                return False
        try:
            await self._js.delete_msg(self._settings.urls_stream, seq)
        except APIError as exc:
            if not (isinstance(exc, NotFoundError) or exc.err_code == _NO_MESSAGE_FOUND):
                raise
            return False  # another sweep took it meanwhile; its dead letter is this one
        if self._on_dead_letter is not None:
            self._on_dead_letter("worker", letter.reason)
        self.swept += 1
        log.warning(
            "dead-lettered %s: its last allowed delivery (%d) ended without an ack",
            url,
            attempts,
            extra={"url": url},
        )
        return True

    async def _was_indexed(self, task: UrlTask) -> bool:
        if self._indexed is None:
            return False
        try:
            return await self._indexed(task)
        except Exception as exc:  # the sink's trouble: dead-letter as if not indexed
            log.warning("could not ask the sink about %s: %s", task.url, exc)
            return False

    async def _remove_processed(self, task: UrlTask, seq: int) -> bool:
        """Delete a URL whose page is stored (its ack was lost), without a dead letter."""
        try:
            await self._js.delete_msg(self._settings.urls_stream, seq)
        except APIError as exc:
            if not (isinstance(exc, NotFoundError) or exc.err_code == _NO_MESSAGE_FOUND):
                raise
            return False
        self.removed += 1
        log.info(
            "removed %s from the URLs stream: its page is indexed (an ack the stream lost)",
            task.url,
            extra={"url": task.url},
        )
        return True
