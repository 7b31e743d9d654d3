"""A JetStream cluster that cannot answer yet (a leader being elected) is waited for.

A role started, or a bucket opened, during a leader election would otherwise fail at once
on a timeout, a 503, or even a "not found" from a server whose view is not current; it
waits ``CLUSTER_WAIT_S`` for the cluster instead, then gives up with
``JetStreamUnavailable`` (the role exits and is restarted; nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError

from fleet.errors import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a role waits for a JetStream cluster that is electing a leader.
CLUSTER_WAIT_S: Final = 30.0


class JetStreamUnavailable(TransientError):
    """JetStream did not answer for ``waited_s`` (a cluster without a leader: too few of its
    servers up); the role exits and is restarted, nothing is lost."""

    reason = "jetstream_unavailable"

    def __init__(self, message: str, *, waited_s: float) -> None:
        super().__init__(message)
        self.waited_s = waited_s


def cluster_busy(exc: BaseException) -> bool:
    """JetStream is there but cannot answer now: no reply in time, or a server's 503 ("system
    temporarily unavailable" while a cluster elects a leader). Not "no responders": that is a
    server without JetStream."""
    if isinstance(exc, ServiceUnavailableError):
        return exc.code == 503
    return isinstance(exc, NatsTimeoutError | TimeoutError)


async def when_answered(
    call: Callable[[], Awaitable[T]],
    *,
    unavailable: Callable[[BaseException], str],
    wait_s: float = CLUSTER_WAIT_S,
) -> T:
    """``call()``, again (backing off) while the cluster is busy, for up to ``wait_s``; then
    ``JetStreamUnavailable`` with the message ``unavailable(last error)``. Other errors pass
    through at once."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if not cluster_busy(exc):
                raise
            if time.monotonic() >= deadline:
                raise JetStreamUnavailable(unavailable(exc), waited_s=wait_s) from None
            attempt += 1
            log.warning("JetStream not answering (%s); waiting for the cluster", exc)
            await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
