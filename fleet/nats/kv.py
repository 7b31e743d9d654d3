"""JetStream key-value buckets fleet keeps shared state in: learned render decisions."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Final

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError

from fleet.messages import RenderDecision, render_decision_decoder, render_decision_encoder
from fleet.nats.replicas import ensure_bucket, replicated_kv
from fleet.settings import Settings

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


DECISION_TTL_S: Final = 7 * 24 * 3600.0


def _kv_key(domain: str) -> str:
    # KV keys allow [-/_=.a-zA-Z0-9]; the domain itself is kept in the value.
    return re.sub(r"[^-_.a-zA-Z0-9]", "_", domain) or "_"


async def render_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The decisions bucket, created on first use with the stream replicas of the settings
    (idempotent; a race with another worker creating it with the same config is harmless)."""
    config = replicated_kv(
        KeyValueConfig(
            bucket=settings.render_bucket,
            history=1,
            # Sites change: a decision expires and the domain is learned again.
            ttl=DECISION_TTL_S,
            description="fleet: learned per-domain render decisions",
        ),
        settings,
    )
    return await ensure_bucket(js, config)


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
    """Decisions in the JetStream KV bucket, cached locally for ``ttl_s``.

    A short TTL instead of a watch: decisions change rarely, a miss costs one KV get,
    and a worker that starts later still reads what others learned before it.
    """

    def __init__(self, kv: KeyValue, *, ttl_s: float = 10.0) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, RenderDecision | None]] = {}

    async def get(self, domain: str) -> RenderDecision | None:
        """The decision learned for ``domain``, or None; from the cache when younger than ``ttl_s``.

        Never raises for KV trouble: it logs and returns the last cached decision (or None), and
        does not cache the failure, so the next call asks the bucket again.
        """
        now = time.monotonic()
        cached = self._cache.get(domain)
        if cached is not None and now - cached[0] < self._ttl_s:
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
