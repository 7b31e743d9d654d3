"""JetStream topology: the streams and durable consumers every role relies on.

Created idempotently at start-up by every role, so any role can start first. Settings that
the server can change in place are updated (with a warning); settings it cannot change
(retention, storage, subjects) are reported as a drift with the fix, never silently reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Protocol

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import FetchTimeoutError, NotFoundError, ServiceUnavailableError

from fleet.errors import ConfigError
from fleet.nats.frontier import crawl_topology
from fleet.settings import Settings
from fleet.urls import redact_url

log = logging.getLogger(__name__)


WORKERS_CONSUMER = "workers"


INDEXER_CONSUMER = "indexer"


@dataclasses.dataclass(frozen=True)
class Topology:
    urls: StreamConfig
    results: StreamConfig
    dlq: StreamConfig
    frontier: StreamConfig
    crawl: StreamConfig
    skipped: StreamConfig
    workers: ConsumerConfig
    indexer: ConsumerConfig


def topology(settings: Settings) -> Topology:
    urls = StreamConfig(
        name=settings.urls_stream,
        description="fleet: URLs waiting to be fetched",
        subjects=[settings.urls_subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=settings.dedup_window_s,
    )
    results = StreamConfig(
        name=settings.results_stream,
        description="fleet: extracted pages waiting to be indexed",
        subjects=[settings.results_subject],
        # Limits retention (not work-queue) so results can be re-indexed into a new sink.
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.results_max_age_s,
        duplicate_window=settings.dedup_window_s,
    )
    dlq = StreamConfig(
        name=settings.dlq_stream,
        description="fleet: dead letters (reason, attempts, original payload)",
        subjects=[f"{settings.dlq_subject}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=settings.dedup_window_s,
    )
    workers = ConsumerConfig(
        durable_name=WORKERS_CONSUMER,
        description="fleet workers (competing pull consumer)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        # No consumer-level `backoff`: nats-server then ignores the delay of a NAK and
        # waits the backoff step instead. Retry delays come from the worker's naks.
        max_ack_pending=20_000,
        max_waiting=2_048,
    )
    indexer = ConsumerConfig(
        durable_name=INDEXER_CONSUMER,
        description="fleet indexer (pull consumer)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        # Slow sink commits are covered by in-progress heartbeats, not a long AckWait.
        ack_wait=settings.ack_wait_s,
        # A sink outage must not dead-letter documents: the indexer holds and retries.
        max_deliver=-1,
        max_ack_pending=20_000,
        max_waiting=512,
    )
    frontier, crawl, skipped = crawl_topology(settings)
    return Topology(
        urls=urls,
        results=results,
        dlq=dlq,
        frontier=frontier,
        crawl=crawl,
        skipped=skipped,
        workers=workers,
        indexer=indexer,
    )


# Fields the server refuses to change on an existing stream.
_IMMUTABLE_STREAM_FIELDS = ("retention", "storage")


_MUTABLE_STREAM_FIELDS = ("subjects", "duplicate_window", "max_age", "max_bytes", "discard")


_IMMUTABLE_CONSUMER_FIELDS = ("deliver_policy", "ack_policy")


_MUTABLE_CONSUMER_FIELDS = ("ack_wait", "max_deliver", "backoff", "max_ack_pending")


def _differs(want: Any, have: Any) -> bool:
    if isinstance(want, float) or isinstance(have, float):
        return abs(float(want or 0) - float(have or 0)) > 1e-3
    if isinstance(want, list) and isinstance(have, list):
        return len(want) != len(have) or any(
            _differs(a, b) for a, b in zip(want, have, strict=True)
        )
    return bool(want != have)


def _drift(want: Any, have: Any, fields: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    return {
        f: (getattr(want, f), getattr(have, f))
        for f in fields
        # None means "server default": not a drift.
        if getattr(want, f) is not None and _differs(getattr(want, f), getattr(have, f))
    }


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> None:
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want)
        log.info("created stream %s", want.name)
        return
    fatal = _drift(want, info.config, _IMMUTABLE_STREAM_FIELDS)
    if fatal:
        detail = ", ".join(f"{k}: want {w}, have {h}" for k, (w, h) in fatal.items())
        raise ConfigError(
            f"stream {want.name} exists with a different configuration ({detail}); "
            f"remove it (`nats stream rm {want.name}`) or set both FLEET_STREAM_PREFIX and "
            "FLEET_SUBJECT_PREFIX to use new streams"
        )
    drift = _drift(want, info.config, _MUTABLE_STREAM_FIELDS)
    if drift:
        log.warning("stream %s config drift, updating: %s", want.name, drift)
        merged = dataclasses.replace(info.config, **{k: w for k, (w, _) in drift.items()})
        await js.update_stream(merged)


async def ensure_consumer(js: JetStreamContext, stream: str, want: ConsumerConfig) -> ConsumerInfo:
    assert want.durable_name is not None
    try:
        # nats-py leaves JetStreamManager.consumer_info unannotated.
        info: ConsumerInfo = await js.consumer_info(stream, want.durable_name)
    except NotFoundError:
        info = await js.add_consumer(stream, want)
        log.info("created consumer %s on %s", want.durable_name, stream)
        return info
    fatal = _drift(want, info.config, _IMMUTABLE_CONSUMER_FIELDS)
    if fatal:
        detail = ", ".join(f"{k}: want {w}, have {h}" for k, (w, h) in fatal.items())
        raise ConfigError(
            f"consumer {want.durable_name} on {stream} has a different configuration ({detail}); "
            f"remove it (`nats consumer rm {stream} {want.durable_name}`)"
        )
    drift = _drift(want, info.config, _MUTABLE_CONSUMER_FIELDS)
    if drift:
        log.warning("consumer %s config drift, updating: %s", want.durable_name, drift)
        merged = dataclasses.replace(info.config, **{k: w for k, (w, _) in drift.items()})
        info = await js.add_consumer(stream, merged)
    return info


async def require_jetstream(js: JetStreamContext, settings: Settings) -> None:
    try:
        await js.account_info()
    except (ServiceUnavailableError, NoRespondersError):
        raise ConfigError(
            f"JetStream is not enabled on the NATS server at {redact_url(settings.nats_server)}; "
            "start it with `nats-server -js` (or `jetstream {}` in its config)"
        ) from None


async def ensure_topology(js: JetStreamContext, settings: Settings) -> Topology:
    topo = topology(settings)
    await require_jetstream(js, settings)
    for stream in (topo.urls, topo.results, topo.dlq, topo.frontier, topo.crawl, topo.skipped):
        await ensure_stream(js, stream)
    await ensure_consumer(js, settings.urls_stream, topo.workers)
    await ensure_consumer(js, settings.results_stream, topo.indexer)
    return topo


class JsPublish(Protocol):
    """JetStream's publish-and-wait-for-PubAck, as the roles use it."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors JetStreamContext.publish
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck: ...


async def pull(
    sub: JetStreamContext.PullSubscription,
    n: int,
    stop: asyncio.Event,
    *,
    stream: str,
    wait_s: float = 1.0,
) -> list[Msg]:
    """Pull up to ``n`` messages, waiting at most ``wait_s``; [] when there are none.

    A closed connection sets ``stop`` (the role then drains and exits); other failures
    (disconnected, server restarting) wait a little so callers can simply loop.
    """
    try:
        msgs: list[Msg] = await sub.fetch(n, timeout=wait_s)
        return msgs
    except (FetchTimeoutError, NatsTimeoutError, TimeoutError):
        return []
    except ConnectionClosedError:
        stop.set()
        return []
    except Exception as exc:
        log.warning("pull from %s failed: %s", stream, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        return []
