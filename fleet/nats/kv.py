"""JetStream key-value buckets fleet keeps shared state in: learned render decisions and
the sample claims of domains still being learned."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Final

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)

from fleet.messages import (
    RenderDecision,
    RenderSample,
    render_decision_decoder,
    render_decision_encoder,
    render_sample_decoder,
    render_sample_encoder,
)
from fleet.nats.replicas import ensure_bucket, replicated_kv
from fleet.settings import Settings

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


DECISION_TTL_S: Final = 7 * 24 * 3600.0


# Sample claims and results of undecided domains: long gone when a decision expires, so
# a domain is learned again from new samples.
SAMPLES_TTL_S: Final = 3600.0


def _kv_key(domain: str) -> str:
    # KV keys allow [-/_=.a-zA-Z0-9]; the domain itself is kept in the value.
    return re.sub(r"[^-_.a-zA-Z0-9]", "_", domain) or "_"


async def _open_bucket(
    js: JetStreamContext, settings: Settings, bucket: str, ttl_s: float, description: str
) -> KeyValue:
    """Open ``bucket`` (one value a key, expiring after ``ttl_s``), creating it on first use
    with the stream replicas of the settings; a race with another worker creating it with
    the same config is harmless."""
    config = KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, description=description)
    return await ensure_bucket(js, replicated_kv(config, settings))


async def render_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The decisions bucket, created on first use (see ``_open_bucket``)."""
    # Sites change: a decision expires and the domain is learned again.
    return await _open_bucket(
        js,
        settings,
        settings.render_bucket,
        DECISION_TTL_S,
        "fleet: learned per-domain render decisions",
    )


async def render_samples_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The sample-claims bucket (see ``KvDecisionStore``), created on first use like the
    decisions bucket."""
    return await _open_bucket(
        js,
        settings,
        settings.render_samples_bucket,
        SAMPLES_TTL_S,
        "fleet: sample renders of domains auto mode is still learning",
    )


async def learned_domains(js: JetStreamContext, settings: Settings) -> list[RenderDecision]:
    """Every decision in the bucket (for `fleet status`); empty when there is no bucket."""
    try:
        kv = await js.key_value(settings.render_bucket)
    except BucketNotFoundError:
        return []
    out: list[RenderDecision] = []
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError on an empty bucket
        return []
    for key in keys:
        try:
            entry = await kv.get(key)
            out.append(render_decision_decoder.decode(entry.value or b""))
        except (KeyNotFoundError, KeyDeletedError):
            continue  # deleted (or expired) since the listing
        except Exception as exc:
            log.warning("skipping render decision %s: %s", key, exc)
    return sorted(out, key=lambda d: d.domain)


class KvDecisionStore:
    """Decisions in the JetStream KV bucket, cached locally for ``ttl_s``; sample claims in
    their own bucket, one key per slot (``<domain>.<slot>``, ``slots`` per domain).

    A short TTL instead of a watch: decisions change rarely, a miss costs one KV get,
    and a worker that starts later still reads what others learned before it. A claim is
    a create (fails when the key exists), so at most ``slots`` samples of a domain are in
    flight fleet-wide; a claim older than ``stale_s`` (its worker died mid-render) is taken
    over with a compare-and-set. A decision is a create too: the first one stays.
    """

    def __init__(
        self,
        kv: KeyValue,
        samples: KeyValue,
        *,
        slots: int = 3,
        stale_s: float = 120.0,
        ttl_s: float = 10.0,
    ) -> None:
        self._kv = kv
        self._samples = samples
        self._slots = slots
        self._stale_s = stale_s
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, RenderDecision | None]] = {}

    async def get(self, domain: str, *, fresh: bool = False) -> RenderDecision | None:
        """The decision learned for ``domain``, or None; from the cache when younger than
        ``ttl_s`` (unless ``fresh``).

        Never raises for KV trouble: it logs and returns the last cached decision (or None), and
        does not cache the failure, so the next call asks the bucket again.
        """
        now = time.monotonic()
        cached = self._cache.get(domain)
        if not fresh and cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        decision: RenderDecision | None = None
        try:
            entry = await self._kv.get(_kv_key(domain))
            if entry.value:
                decision = render_decision_decoder.decode(entry.value)
        except (KeyNotFoundError, KeyDeletedError):  # deleted: relearn the domain
            decision = None
        except Exception as exc:  # KV trouble: decide per page until it is back
            log.warning("render decision for %s unavailable: %s", domain, exc)
            return cached[1] if cached is not None else None
        self._cache[domain] = (now, decision)
        return decision

    async def put(self, decision: RenderDecision) -> None:
        """Store ``decision`` under its domain (replacing any) and cache it; KV errors propagate."""
        await self._kv.put(_kv_key(decision.domain), render_decision_encoder.encode(decision))
        self._cache[decision.domain] = (time.monotonic(), decision)

    async def decide(self, decision: RenderDecision) -> RenderDecision:
        """Store ``decision`` unless the domain has one; returns (and caches) the one stored."""
        key = _kv_key(decision.domain)
        try:
            await self._kv.create(key, render_decision_encoder.encode(decision))
            stored = decision
        except KeyWrongLastSequenceError:  # another worker decided first
            entry = await self._kv.get(key)
            stored = render_decision_decoder.decode(entry.value or b"")
        self._cache[decision.domain] = (time.monotonic(), stored)
        return stored

    def _slot_key(self, domain: str, slot: int) -> str:
        return f"{_kv_key(domain)}.{slot}"

    async def claim_sample(self, domain: str) -> int | None:
        """Claim the first free (or stale) slot of ``domain``; None when all are taken."""
        now = time.time()
        claim = RenderSample(domain=domain, slot=0, claimed_at=now)
        try:
            for slot in range(self._slots):
                key, value = self._slot_key(domain, slot), _claim_value(claim, slot)
                try:
                    await self._samples.create(key, value)
                    return slot
                except KeyWrongLastSequenceError:
                    pass
                try:
                    entry = await self._samples.get(key)
                except (KeyNotFoundError, KeyDeletedError):
                    continue  # released meanwhile: the next claim gets it
                held = render_sample_decoder.decode(entry.value or b"")
                if held.done or now - held.claimed_at < self._stale_s:
                    continue
                try:
                    await self._samples.update(key, value, last=entry.revision)
                    return slot
                except KeyWrongLastSequenceError:
                    continue  # another worker took it over first
        except Exception as exc:  # KV trouble: no sample now, the page waits for a decision
            log.warning("cannot claim a render sample of %s: %s", domain, exc)
        return None

    async def release_sample(self, domain: str, slot: int) -> None:
        """Delete the slot's claim; KV errors propagate."""
        await self._samples.delete(self._slot_key(domain, slot))

    async def report_sample(self, sample: RenderSample) -> list[RenderSample]:
        """Write the sample's result into its slot; returns the domain's finished samples."""
        await self._samples.put(
            self._slot_key(sample.domain, sample.slot), render_sample_encoder.encode(sample)
        )
        done: list[RenderSample] = []
        for slot in range(self._slots):
            try:
                entry = await self._samples.get(self._slot_key(sample.domain, slot))
            except (KeyNotFoundError, KeyDeletedError):
                continue
            found = render_sample_decoder.decode(entry.value or b"")
            if found.done:
                done.append(found)
        return done


def _claim_value(claim: RenderSample, slot: int) -> bytes:
    """The claim for ``slot``, encoded."""
    return render_sample_encoder.encode(msgspec.structs.replace(claim, slot=slot))
