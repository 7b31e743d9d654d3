"""Replication of everything fleet creates in JetStream, in one place.

Every stream and KV bucket gets ``FLEET_STREAM_REPLICAS`` copies, placed on the servers
with every ``FLEET_STREAM_PLACEMENT_TAGS`` tag (`replicated`, `replicated_kv`); a server
that cannot hold them is explained as a ``ConfigError`` naming the setting
(`replication_explained`); `ensure_bucket` creates a bucket or brings an existing one's
replication in line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, Placement, StreamConfig
from nats.js.errors import APIError, BucketNotFoundError
from nats.js.kv import KeyValue

from fleet.errors import ConfigError
from fleet.nats.busy import when_answered
from fleet.settings import Settings

log = logging.getLogger(__name__)


def placement(settings: Settings) -> Placement | None:
    """Where replicas go: servers with every ``FLEET_STREAM_PLACEMENT_TAGS`` tag; None: anywhere."""
    if not settings.stream_placement_tags:
        return None
    return Placement(tags=list(settings.stream_placement_tags))


def replicated(config: StreamConfig, settings: Settings) -> StreamConfig:
    """``config`` with the replicas and placement of the settings; use it for every stream."""
    return dataclasses.replace(
        config, num_replicas=settings.stream_replicas, placement=placement(settings)
    )


def replicated_kv(config: KeyValueConfig, settings: Settings) -> KeyValueConfig:
    """``config`` with the replicas and placement of the settings; use it for every KV bucket."""
    return dataclasses.replace(
        config, replicas=settings.stream_replicas, placement=placement(settings)
    )


# JetStream's error codes for replicas the servers cannot hold.
_NOT_CLUSTERED = 10074  # replicas > 1 not supported in non-clustered mode
_INSUFFICIENT_RESOURCES = 10023  # fewer JetStream servers (with the tags) than replicas
_NO_SUITABLE_PEERS = 10005  # no suitable peers for placement


@contextlib.contextmanager
def replication_explained(
    name: str, replicas: int, placement: Placement | None = None
) -> Iterator[None]:
    """Around a stream or bucket create/update: the server's "cannot place the replicas"
    becomes a ``ConfigError`` naming the setting to change; other errors pass through."""
    try:
        yield
    except APIError as exc:
        if exc.err_code == _NOT_CLUSTERED:
            raise ConfigError(
                f"stream {name}: FLEET_STREAM_REPLICAS={replicas} needs a JetStream cluster, "
                "but the NATS server is a single server; set FLEET_STREAM_REPLICAS=1, or run "
                "a cluster (docs/scaling.md)"
            ) from None
        if exc.err_code in (_INSUFFICIENT_RESOURCES, _NO_SUITABLE_PEERS):
            tags = ",".join(placement.tags or []) if placement else ""
            where = f" tagged {tags}" if tags else ""
            raise ConfigError(
                f"stream {name}: cannot place {replicas} replicas "
                f"({exc.description or 'insufficient resources'}); FLEET_STREAM_REPLICAS must "
                f"not exceed the JetStream servers{where} that are up in the cluster (check "
                "FLEET_STREAM_PLACEMENT_TAGS, or bring the missing servers back)"
            ) from None
        raise


async def ensure_bucket(js: JetStreamContext, want: KeyValueConfig) -> KeyValue:
    """Open the KV bucket ``want``, creating it if missing; an existing bucket whose replicas
    or placement differ is updated in place (with a warning), like a stream's drift.

    A cluster electing a leader is waited for (``when_answered``): a worker started during
    an election opens its buckets once it is over.
    """
    return await when_answered(
        lambda: _ensure_bucket(js, want),
        unavailable=lambda exc: (
            f"JetStream did not answer while opening KV bucket {want.bucket} ({exc!s}); "
            "is a majority of the cluster's servers up?"
        ),
    )


async def _ensure_bucket(js: JetStreamContext, want: KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(want.bucket)
    except BucketNotFoundError:
        with replication_explained(f"KV_{want.bucket}", want.replicas, want.placement):
            return await js.create_key_value(config=want)
    # A KV bucket is the stream KV_<bucket>: reconcile its replication like any stream's.
    stream = f"KV_{want.bucket}"
    info = await js.stream_info(stream)
    have = info.config
    want_tags = sorted(want.placement.tags or []) if want.placement else None
    have_tags = sorted(have.placement.tags or []) if have.placement else []
    if have.num_replicas != want.replicas or (want_tags is not None and want_tags != have_tags):
        log.warning(
            "KV bucket %s replication drift, updating: replicas %s -> %d%s",
            want.bucket,
            have.num_replicas,
            want.replicas,
            f", tags {have_tags} -> {want_tags}" if want_tags not in (None, have_tags) else "",
        )
        with replication_explained(stream, want.replicas, want.placement):
            await js.update_stream(
                dataclasses.replace(
                    have,
                    num_replicas=want.replicas,
                    placement=want.placement if want.placement is not None else have.placement,
                )
            )
    return kv
