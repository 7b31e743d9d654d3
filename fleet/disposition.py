"""The one place where a handler's outcome becomes ack, nak (with delay) or term.

``decide`` is pure (unit-tested as a table); ``Settler.settle`` carries the decision out on a
JetStream message. Permanent errors, and transient ones on the last allowed delivery, are
written to the dead-letter stream *before* the message is terminated, so a URL is never
silently gone: if the dead letter cannot be written, the message is nak'ed instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleet.errors import PermanentError, TransientError, error_reason
from fleet.messages import (
    DeadLetter,
    UrlTask,
    dead_letter_encoder,
    trace_headers,
    url_task_decoder,
)
from fleet.nats.streams import WORKERS_CONSUMER, JsPublish
from fleet.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_CAP_S = 3600.0


class Action(enum.Enum):
    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    reason: str = ""
    dead_letter: bool = False


def backoff_delay(attempt: int, base_s: float, max_s: float, jitter: float = 0.2) -> float:
    """Exponential backoff with jitter, so retries of a burst do not land together."""
    # Exponent capped: past 2**30 the max applies anyway, and a sink outage of thousands of
    # attempts must not overflow a float. (int ** int is typed Any; this one is >= 0.)
    growth: int = 2 ** min(30, max(0, attempt - 1))
    delay = min(max_s, base_s * growth)
    return delay * (1 + random.uniform(-jitter, jitter))


def decide(
    error: BaseException | None,
    *,
    attempt: int,
    max_deliver: int,
    backoff_base_s: float,
    backoff_max_s: float,
) -> Decision:
    """Map an outcome to an action.

    Unknown exceptions count as transient: a bug must not lose a URL, and after
    ``max_deliver`` attempts it is dead-lettered with reason ``internal_error``.
    """
    if error is None:
        return Decision(Action.ACK)
    reason = error_reason(error)
    if isinstance(error, PermanentError):
        return Decision(Action.TERM, reason=reason, dead_letter=True)
    if max_deliver > 0 and attempt >= max_deliver:
        return Decision(Action.TERM, reason=reason, dead_letter=True)
    if isinstance(error, TransientError) and error.retry_after_s is not None:
        delay = min(max(error.retry_after_s, 0.0), RETRY_AFTER_CAP_S)
    else:
        delay = backoff_delay(attempt, backoff_base_s, backoff_max_s)
    return Decision(Action.NAK, delay_s=delay, reason=reason)


class JetStreamMsg(Protocol):
    """The part of nats-py's Msg the settler uses (kept small so tests can see the contract)."""

    data: bytes
    headers: dict[str, str] | None

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


class Settler:
    """Acks, naks and terms the messages of one stage (``worker`` or ``indexer``).

    ``settle`` carries out the decision for a handler's outcome; ``release`` hands back a
    message whose handling was cut short; ``dead_letter`` writes one dead letter.
    """

    def __init__(
        self,
        js: JsPublish,
        settings: Settings,
        *,
        stage: Literal["worker", "indexer"],
        max_deliver: int,
    ) -> None:
        self._js = js
        self._settings = settings
        self._stage: Literal["worker", "indexer"] = stage
        self._max_deliver = max_deliver

    def decide(self, error: BaseException | None, attempt: int) -> Decision:
        return decide(
            error,
            attempt=attempt,
            max_deliver=self._max_deliver,
            backoff_base_s=self._settings.backoff_base_s,
            backoff_max_s=self._settings.backoff_max_s,
        )

    async def settle(
        self,
        msg: JetStreamMsg,
        error: BaseException | None,
        *,
        attempt: int,
        url: str,
        item_id: str,
        seq: int,
        before_term: Callable[[], Awaitable[None]] | None = None,
    ) -> Decision:
        """Carry out the decision for ``error`` (None: success) on ``msg``.

        ``before_term`` runs after a dead letter is written and before the message is
        terminated (a crawl counts the URL there); if it fails the message is nak'ed, and
        both are repeated on the redelivery (each is idempotent).
        """
        decision = self.decide(error, attempt)
        try:
            if decision.action is Action.ACK:
                await msg.ack()
            elif decision.action is Action.NAK:
                log.info(
                    "retrying %s in %.1fs (attempt %d, %s)",
                    url,
                    decision.delay_s,
                    attempt,
                    error,
                    extra={"url": url},
                )
                await msg.nak(delay=decision.delay_s)
            else:
                assert error is not None
                letter = DeadLetter(
                    url=url,
                    id=item_id,
                    stage=self._stage,
                    reason=decision.reason,
                    error=str(error)[:2000],
                    attempts=attempt,
                    failed_at=time.time(),
                    payload=msg.data,
                    trace_headers=trace_headers(msg.headers),
                )
                if not await self.dead_letter(letter, seq) or not await _run_hook(before_term, url):
                    # Keep the message rather than lose it; it comes back after the delay.
                    await msg.nak(delay=backoff_delay(attempt, self._settings.backoff_base_s, 30))
                    return Decision(Action.NAK, delay_s=0, reason="dead_letter_failed")
                log.warning(
                    "dead-lettered %s after %d attempt(s): %s (%s)",
                    url,
                    attempt,
                    decision.reason,
                    error,
                    extra={"url": url},
                )
                await msg.term()
        except Exception as exc:
            # The connection is down: the server redelivers after AckWait, nothing is lost.
            log.warning("could not %s %s: %s", decision.action.value, url, exc, extra={"url": url})
        return decision

    async def release(self, msg: JetStreamMsg) -> None:
        """Hand ``msg`` back for immediate redelivery, without counting a failure.

        For a role that stops with work in hand (a drain out of time, a batch held while the
        sink is down): no delay, no dead letter, no log of a retry, since the attempt did not
        fail (the server still counts the delivery towards max_deliver). Errors are ignored:
        without a connection the server redelivers after AckWait.
        """
        with contextlib.suppress(Exception):
            await msg.nak()

    async def dead_letter(self, letter: DeadLetter, seq: int) -> bool:
        try:
            await self._js.publish(
                f"{self._settings.dlq_subject}.{self._stage}",
                dead_letter_encoder.encode(letter),
                stream=self._settings.dlq_stream,
                # One dead letter per message delivery chain, even if term() is lost.
                headers={"Nats-Msg-Id": f"dlq-{self._stage}-{letter.id}-{seq}"},
            )
        except Exception as exc:
            log.error(
                "could not write dead letter for %s: %s", letter.url, exc, extra={"url": letter.url}
            )
            return False
        return True


async def _run_hook(hook: Callable[[], Awaitable[None]] | None, url: str) -> bool:
    if hook is None:
        return True
    try:
        await hook()
    except Exception as exc:
        log.warning("could not record the dead letter of %s: %s", url, exc, extra={"url": url})
        return False
    return True


class MaxDeliveriesReaper:
    """Dead-letters URLs whose last allowed delivery ended without an ack or a term.

    That happens when a worker crashes or is stopped during a URL's last attempt: the server
    will not deliver it again and a work-queue stream would keep it for ever. The server
    announces it with a MAX_DELIVERIES advisory; one worker (queue group) takes the message
    out of the stream into the dead-letter stream. Dedup ids match the settler's, so a
    dead letter is never written twice.
    """

    QUEUE = "fleet-reaper"

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        settler: Settler,
        settings: Settings,
        *,
        on_dead_letter: Callable[[str, str], None] | None = None,
        before_delete: Callable[[UrlTask], Awaitable[None]] | None = None,
    ):
        """``before_delete`` runs for a decoded task after its dead letter is written and
        before the URL leaves the stream (a crawl counts it there)."""
        self._on_dead_letter = on_dead_letter
        self._before_delete = before_delete
        self._nc = nc
        self._js = js
        self._settler = settler
        self._settings = settings
        self._sub: Subscription | None = None

    @property
    def subject(self) -> str:
        return (
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
            f"{self._settings.urls_stream}.{WORKERS_CONSUMER}"
        )

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, queue=self.QUEUE, cb=self._on_advisory)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries") or self._settings.max_deliver)
            raw = await self._js.get_msg(self._settings.urls_stream, seq)
        except NotFoundError:
            return  # acked or dead-lettered meanwhile
        except Exception as exc:
            log.warning("could not handle max-deliveries advisory: %s", exc)
            return
        data = raw.data or b""
        task: UrlTask | None = None
        try:
            task = url_task_decoder.decode(data)
            url, item_id = task.url, task.id
        except Exception:
            url, item_id = "?", f"seq{seq}"
        letter = DeadLetter(
            url=url,
            id=item_id,
            stage="worker",
            reason="max_deliveries",
            error="the last allowed delivery ended without an ack (worker crashed or stopped)",
            attempts=deliveries,
            failed_at=time.time(),
            payload=data,
            trace_headers=trace_headers(raw.headers),
        )
        if await self._settler.dead_letter(letter, seq):
            if task is not None and self._before_delete is not None:
                hook = self._before_delete
                if not await _run_hook(lambda: hook(task), url):
                    return  # the next advisory (or a restart's) tries again
            if self._on_dead_letter is not None:
                self._on_dead_letter("worker", letter.reason)
            with contextlib.suppress(NotFoundError):
                await self._js.delete_msg(self._settings.urls_stream, seq)
            log.warning(
                "dead-lettered %s after %d deliveries without an ack",
                url,
                deliveries,
                extra={"url": url},
            )
