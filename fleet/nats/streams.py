"""JetStream topology: the streams and durable consumers every role relies on.

Created idempotently at start-up by every role, so any role can start first. Settings that
the server can change in place are updated (with a warning); settings it cannot change
(retention, storage, subjects) are reported as a drift with the fix, never silently reused.

Every stream and KV bucket fleet creates is replicated as ``FLEET_STREAM_REPLICAS`` says
(``fleet.nats.replicas``: the one place replicas and placement come from); durable
consumers inherit their stream's replicas.
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
    Placement,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import FetchTimeoutError, NotFoundError, ServiceUnavailableError

from fleet.errors import ConfigError
from fleet.nats.busy import CLUSTER_WAIT_S, cluster_busy, when_answered
from fleet.nats.frontier import crawl_topology
from fleet.nats.replicas import replicated, replication_explained
from fleet.settings import Settings
from fleet.urls import redact_servers

log = logging.getLogger(__name__)


WORKERS_CONSUMER = "workers"
INDEXER_CONSUMER = "indexer"


@dataclasses.dataclass(frozen=True)
class Topology:
    """The streams and durable consumers, configured as fleet wants them."""

    urls: StreamConfig
    results: StreamConfig
    dlq: StreamConfig
    frontier: StreamConfig
    crawl: StreamConfig
    skipped: StreamConfig
    workers: ConsumerConfig
    indexer: ConsumerConfig


def topology(settings: Settings) -> Topology:
    """The configuration fleet wants for ``settings``; pure, nothing is sent to the server."""
    urls = StreamConfig(
        name=settings.urls_stream,
        description="fleet: URLs waiting to be fetched",
        # <urls>.later.<id>.<seq>: URLs deferred for politeness, as scheduled messages
        # (nats-server 2.12+) that the server publishes back to <urls> when they are due.
        subjects=[settings.urls_subject, f"{settings.deferred_subject}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        # Message schedules require discard old. fleet sets no limits on this stream, so
        # nothing is ever discarded (do not give it max_msgs/max_bytes/max_age).
        discard=DiscardPolicy.OLD,
        duplicate_window=settings.dedup_window_s,
        allow_msg_schedules=True,
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
    skipped = StreamConfig(
        name=settings.skipped_stream,
        description="fleet: URLs not fetched on purpose (robots.txt), one message each",
        subjects=[f"{settings.skipped_subject}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.results_max_age_s,
        duplicate_window=settings.dedup_window_s,
    )
    workers = ConsumerConfig(
        durable_name=WORKERS_CONSUMER,
        description="fleet workers (competing pull consumer)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        # Not the deferred URLs' schedules: the server publishes those to urls when due.
        filter_subject=settings.urls_subject,
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
    frontier, crawl = crawl_topology(settings)
    return Topology(
        urls=replicated(urls, settings),
        results=replicated(results, settings),
        dlq=replicated(dlq, settings),
        skipped=replicated(skipped, settings),
        frontier=replicated(frontier, settings),
        crawl=replicated(crawl, settings),
        workers=workers,
        indexer=indexer,
    )


# Fields the server refuses to change on an existing stream.
_IMMUTABLE_STREAM_FIELDS = ("retention", "storage")


# A cluster changes replicas in place (adds or removes peers) and moves a stream whose
# placement tags change.
_MUTABLE_STREAM_FIELDS = (
    "subjects",
    "duplicate_window",
    "max_age",
    "max_bytes",
    "discard",
    "num_replicas",
    "placement",
    "allow_msg_schedules",
)


_IMMUTABLE_CONSUMER_FIELDS = ("deliver_policy", "ack_policy")


_MUTABLE_CONSUMER_FIELDS = (
    "ack_wait",
    "max_deliver",
    "backoff",
    "max_ack_pending",
    "filter_subject",
)


def _differs(want: Any, have: Any) -> bool:
    if isinstance(want, Placement):
        # The server fills in the cluster's name; fleet only asks for tags.
        tags = have.tags if isinstance(have, Placement) else None
        return sorted(want.tags or []) != sorted(tags or [])
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
    """Create the stream ``want``, or reconcile the existing one with it.

    Fields the server can change in place are updated, with a warning; a different retention
    or storage raises ``ConfigError`` saying how to remove the stream or use new names.
    """
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        with replication_explained(want.name, want.num_replicas or 1, want.placement):
            await js.add_stream(want)
        log.info("created stream %s (%d replica(s))", want.name, want.num_replicas or 1)
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
        with replication_explained(want.name, want.num_replicas or 1, want.placement):
            await js.update_stream(merged)


async def ensure_consumer(js: JetStreamContext, stream: str, want: ConsumerConfig) -> ConsumerInfo:
    """Create the durable consumer ``want`` on ``stream``, or reconcile it; returns its info.

    Changeable fields (ack wait, max deliver...) are updated with a warning; a different
    deliver or ack policy raises ``ConfigError`` with the command that removes the consumer.
    """
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


# JetStream API level 2 = nats-server 2.12: message schedules (URLs deferred for
# politeness come back on their own) and per-message TTLs (robots.txt cache, claims).
MIN_API_LEVEL = 2


async def require_jetstream(
    js: JetStreamContext, settings: Settings, *, min_api_level: int = 0
) -> None:
    """Raise ``ConfigError`` with the fix when the NATS server has JetStream switched off
    or is older than ``min_api_level`` needs.

    A cluster answering 503 (electing its leader) is not that: the error passes through.
    """
    try:
        info = await js.account_info()
    except (ServiceUnavailableError, NoRespondersError) as exc:
        if cluster_busy(exc):
            raise
        shown = redact_servers(settings.nats_servers)
        raise ConfigError(
            f"JetStream is not enabled on the NATS server at {shown}; "
            "start it with `nats-server -js` (or `jetstream {}` in its config)"
        ) from None
    level = (info.api.level if info.api is not None else None) or 0
    if level < min_api_level:
        raise ConfigError(
            f"the NATS server at {redact_servers(settings.nats_servers)} is too old for fleet "
            f"(JetStream API level {level}, need {min_api_level}: nats-server 2.12 or newer, "
            "for message schedules and per-message TTLs); upgrade nats-server"
        )


async def ensure_topology(
    js: JetStreamContext, settings: Settings, *, wait_s: float = CLUSTER_WAIT_S
) -> Topology:
    """Check JetStream, then create or reconcile every stream and consumer; returns the topology.

    A cluster that cannot answer yet (a leader being elected) is waited for up to ``wait_s``,
    then ``JetStreamUnavailable``: a role started during a leader election starts once it is
    over.
    """
    return await when_answered(
        lambda: _ensure_topology(js, settings),
        unavailable=lambda exc: (
            f"JetStream at {redact_servers(settings.nats_servers)} did not answer for "
            f"{wait_s:g}s ({exc!s}); is a majority of the cluster's servers up?"
        ),
        wait_s=wait_s,
    )


async def _ensure_topology(js: JetStreamContext, settings: Settings) -> Topology:
    topo = topology(settings)
    await require_jetstream(js, settings, min_api_level=MIN_API_LEVEL)
    streams = (topo.urls, topo.results, topo.dlq, topo.skipped)
    for stream in (*streams, topo.frontier, topo.crawl):
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
    ) -> PubAck:
        """Publish ``payload`` and return the PubAck once ``stream`` has stored it.

        Raises when it has not been stored: no PubAck within ``timeout``, no stream on the subject,
        or an error reply. With a ``Nats-Msg-Id`` header, a re-publish within the dedup window is
        not stored twice (its PubAck has ``duplicate`` set).
        """


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
