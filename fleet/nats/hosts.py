"""JetStream KV implementations of the politeness Protocols (``fleet.scrape.politeness``).

* ``KvHostSlots``: one ``HostState`` per origin in the hosts bucket (memory storage: it is
  limiter state, cheap to lose on a server restart), changed by compare-and-set on the
  key's last revision (``Nats-Expected-Last-Subject-Sequence``). Entries of idle origins
  age out of the bucket.
* ``KvRobotsCache``: one ``RobotsEntry`` per origin in the robots bucket (file storage),
  each written with a per-message TTL (``Nats-TTL``, nats-server 2.11+), plus short-lived
  claim keys (also with a TTL, so a worker killed mid-fetch does not block the origin).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)

from fleet.errors import ConfigError, TransientError
from fleet.messages import (
    HostState,
    RobotsEntry,
    host_state_decoder,
    host_state_encoder,
    robots_entry_decoder,
    robots_entry_encoder,
)
from fleet.nats.acks import FastAcks
from fleet.nats.replicas import ensure_bucket, replicated_kv
from fleet.settings import Settings

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

T = TypeVar("T")

# An origin nobody asked about for this long is forgotten (its delay starts afresh).
HOSTS_MAX_AGE_S: Final = 6 * 3600.0
CAS_TRIES: Final = 20
LOCAL_STATES: Final = 10_000
# JetStream's "wrong last sequence" error codes (JSStreamWrongLastSequence{ErrF,ConstantErr}).
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)
_UPDATE_TIMEOUT_S: Final = 5.0


@functools.lru_cache(maxsize=16_384)
def origin_key(origin: str) -> str:
    """A KV key for ``scheme://host:port``: readable, plus a hash so no two collide."""
    readable = re.sub(r"[^-_a-zA-Z0-9]", "_", origin.replace("://", "_"))
    digest = hashlib.blake2b(origin.encode(), digest_size=4).hexdigest()
    return f"{readable}-{digest}"


async def _bucket(
    js: JetStreamContext,
    settings: Settings,
    name: str,
    *,
    storage: StorageType,
    description: str,
    max_age_s: float | None = None,
) -> KeyValue:
    # Idempotent: another worker creating it with the same config at once is harmless.
    config = KeyValueConfig(
        bucket=name, history=1, ttl=max_age_s, storage=storage, direct=True, description=description
    )
    return await ensure_bucket(js, replicated_kv(config, settings))


async def hosts_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The per-origin limiter state bucket, created on first use."""
    return await _bucket(
        js,
        settings,
        settings.hosts_bucket,
        storage=StorageType.MEMORY,
        max_age_s=HOSTS_MAX_AGE_S,
        description="fleet: per-host limiter state (next start, leases, adaptive delay)",
    )


async def robots_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The robots.txt cache bucket, created on first use (entries carry their own TTL)."""
    return await _bucket(
        js,
        settings,
        settings.robots_bucket,
        storage=StorageType.FILE,
        description="fleet: robots.txt per origin (per-message TTL)",
    )


class KvHostSlots:
    """``HostSlots`` over a KV bucket; remembers the last revision it saw per origin, so a
    worker that is the only one talking to an origin writes without reading first.

    With ``acks`` (and the bucket's name), the compare-and-set writes go through
    ``FastAcks`` (one wildcard reply inbox, msgspec PubAcks) instead of nats-py's
    ``kv.update``: the same publish on ``$KV.<bucket>.<key>`` with the same expected-revision
    header, at about half the client CPU.
    """

    def __init__(self, kv: KeyValue, *, acks: FastAcks | None = None, bucket: str = "") -> None:
        if acks is not None and not bucket:
            raise ConfigError("KvHostSlots with acks needs the bucket's name")
        self._kv = kv
        self._acks = acks
        self._prefix = f"$KV.{bucket}."
        self._seen: collections.OrderedDict[str, tuple[int, HostState | None]] = (
            collections.OrderedDict()
        )

    async def transact(
        self, origin: str, change: Callable[[HostState | None], tuple[HostState | None, T]]
    ) -> T:
        """Compare-and-set loop (see ``fleet.scrape.politeness.HostSlots``)."""
        key = origin_key(origin)
        seen = self._seen.get(origin)
        revision, state = seen if seen is not None else await self._read(key)
        for _ in range(CAS_TRIES):
            new, result = change(state)
            if new is None:
                self._remember(origin, revision, state)
                return result
            try:
                revision = await self._update(key, host_state_encoder.encode(new), revision)
            except KeyWrongLastSequenceError:
                revision, state = await self._read(key)  # someone else wrote: again
                continue
            self._remember(origin, revision, new)
            return result
        raise TransientError(
            f"host state of {origin} kept changing under {CAS_TRIES} tries", reason="host_state"
        )

    async def _update(self, key: str, value: bytes, last: int) -> int:
        """Write ``value`` if the key's revision is still ``last``; the new revision."""
        if self._acks is None:
            return await self._kv.update(key, value, last=last)
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last or 0)}
        try:
            acked = await self._acks.publish_async(self._prefix + key, value, headers=headers)
            ack = await asyncio.wait_for(acked, _UPDATE_TIMEOUT_S)
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(description=err.description) from None
            raise
        return ack.seq

    async def get(self, origin: str) -> HostState | None:
        """The state as stored now (tests, `fleet status`)."""
        return (await self._read(origin_key(origin)))[1]

    async def _read(self, key: str) -> tuple[int, HostState | None]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as exc:
            # A delete marker still has a revision to compare against.
            marker = getattr(exc, "entry", None)
            return (getattr(marker, "revision", None) or 0), None
        if not entry.value:
            return entry.revision or 0, None
        return entry.revision or 0, host_state_decoder.decode(entry.value)

    def _remember(self, origin: str, revision: int, state: HostState | None) -> None:
        self._seen[origin] = (revision, state)
        self._seen.move_to_end(origin)
        while len(self._seen) > LOCAL_STATES:
            self._seen.popitem(last=False)


class KvRobotsCache:
    """``RobotsCache`` over a KV bucket."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket

    async def get(self, origin: str) -> RobotsEntry | None:
        """The stored entry, or None."""
        try:
            entry = await self._kv.get(origin_key(origin))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        try:
            return robots_entry_decoder.decode(entry.value)
        except Exception as exc:
            log.warning("ignoring an undecodable robots.txt entry for %s: %s", origin, exc)
            return None

    async def put(self, entry: RobotsEntry, ttl_s: float) -> None:
        """Store ``entry``; the server removes it after ``ttl_s`` (per-message TTL)."""
        # kv.put has no TTL argument; a KV put is a publish on $KV.<bucket>.<key> (ADR-8).
        await self._js.publish(
            f"$KV.{self._bucket}.{origin_key(entry.origin)}",
            robots_entry_encoder.encode(entry),
            msg_ttl=max(1.0, ttl_s),
        )

    async def claim(self, origin: str, ttl_s: float) -> bool:
        """Take the right to fetch ``origin``'s robots.txt for ``ttl_s``; False if taken."""
        try:
            await self._kv.create(f"claim.{origin_key(origin)}", b"1", msg_ttl=max(1.0, ttl_s))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def unclaim(self, origin: str) -> None:
        """Give the claim back early (the fetch is done): a delete marker, which the next
        ``claim`` (kv.create) writes over."""
        await self._kv.delete(f"claim.{origin_key(origin)}")
