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
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec

from fleet.errors import PermanentError, TransientError, error_reason
from fleet.messages import (
    DeadLetter,
    Skipped,
    UrlTask,
    dead_letter_encoder,
    skipped_encoder,
    trace_headers,
    url_task_encoder,
)
from fleet.nats.streams import JsPublish
from fleet.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_CAP_S = 3600.0


class Action(enum.Enum):
    """What becomes of a JetStream message once its handler is done."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclasses.dataclass(frozen=True)
class Decision:
    """``decide``'s verdict: the action, the nak delay, the reason, and whether to dead-letter."""

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

    async def ack(self) -> None:
        """Mark the message handled; a work-queue stream then drops it."""

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery after ``delay`` seconds (``None``: at once)."""

    async def term(self) -> None:
        """Stop redelivery for good; the server will not send the message again."""

    async def in_progress(self) -> None:
        """Restart the AckWait timer: the handler is still working on it."""


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
        """``decide`` with this stage's ``max_deliver`` and the settings' backoff."""
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
        """Carry out the decision for ``error`` (None: success) on ``msg`` and return it.

        Ack, nak with a delay, or write the dead letter and term. If the dead letter cannot be
        written the message is nak'ed instead and the returned decision is a NAK with reason
        ``dead_letter_failed``. ``before_term`` runs after a dead letter is written and before
        the message is terminated (a crawl counts the URL there); if it fails the message is
        nak'ed, and both are repeated on the redelivery (each is idempotent). A failed
        ack/nak/term is logged, not raised: the server redelivers after AckWait.
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

    async def done(self, msg: JetStreamMsg) -> None:
        """Ack a message fully handled outside ``settle`` (a crawl's skipped URL). Errors are
        ignored: the message is then redelivered, and handling it again is harmless."""
        with contextlib.suppress(Exception):
            await msg.ack()

    async def release(self, msg: JetStreamMsg, delay_s: float = 0.0) -> None:
        """Hand ``msg`` back for redelivery (after ``delay_s``), without counting a failure.

        For a role that stops with work in hand (a drain out of time, a batch held while the
        sink is down): no delay, no dead letter, no log of a retry, since the attempt did not
        fail (the server still counts the delivery towards max_deliver). Errors are ignored:
        without a connection the server redelivers after AckWait.
        """
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay_s or None)

    async def skip(self, msg: JetStreamMsg, record: Skipped, *, seq: int) -> bool:
        """A URL not fetched on purpose: record it in the skipped stream, then ack.

        Like a dead letter, the record is written first; if it cannot be, the message is
        nak'ed (back after a short delay) rather than lost. Returns whether it was skipped.
        """
        try:
            await self._js.publish(
                f"{self._settings.skipped_subject}.{record.reason}",
                skipped_encoder.encode(record),
                stream=self._settings.skipped_stream,
                headers={"Nats-Msg-Id": f"skip-{record.id}-{seq}"},
            )
        except Exception as exc:
            log.warning(
                "could not record skipped %s: %s", record.url, exc, extra={"url": record.url}
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=backoff_delay(1, self._settings.backoff_base_s, 30))
            return False
        log.info("skipped %s: %s", record.url, record.detail, extra={"url": record.url})
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; the record's dedup id holds
            log.warning("could not ack skipped %s: %s", record.url, exc, extra={"url": record.url})
        return True

    async def defer(
        self, msg: JetStreamMsg, task: UrlTask, *, until: float, attempts: int, seq: int
    ) -> bool:
        """Hand a URL that must wait for its host back to the stream, due at ``until``.

        A nak with a delay would cost a delivery attempt (JetStream counts every delivery
        against max_deliver), so the task is re-published as a scheduled message
        (``Nats-Schedule: @at``, nats-server 2.12+) that the server turns back into a URL
        message when due. ``attempts`` (fetch attempts so far) travels in the task. The
        original is acked only after the PubAck; its seq in the dedup id makes a repeat of
        the same deferral harmless. Returns False (message nak'ed) if the publish failed.
        """
        s = self._settings
        when = datetime.fromtimestamp(max(until, time.time()), UTC)
        headers = {
            **trace_headers(msg.headers),
            "Nats-Msg-Id": f"defer-{task.id}-{seq}",
            "Nats-Schedule": f"@at {when.isoformat(timespec='milliseconds')}".replace(
                "+00:00", "Z"
            ),
            "Nats-Schedule-Target": s.urls_subject,
        }
        payload = url_task_encoder.encode(msgspec.structs.replace(task, attempts=attempts))
        try:
            await self._js.publish(
                f"{s.deferred_subject}.{task.id}.{seq}",
                payload,
                stream=s.urls_stream,
                headers=headers,
            )
        except Exception as exc:
            log.warning("could not defer %s: %s", task.url, exc, extra={"url": task.url})
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(max(until - time.time(), 0.0), RETRY_AFTER_CAP_S))
            return False
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later: deferred again under the same id
            log.warning("could not ack deferred %s: %s", task.url, exc, extra={"url": task.url})
        return True

    async def dead_letter(self, letter: DeadLetter, seq: int) -> bool:
        """Publish ``letter`` to the dead-letter stream; False (logged) if it could not be written.

        The dedup id is built from the stage, the item id and ``seq`` (the stream sequence), so a
        retry, or the sweep (``fleet.sweep``) after a lost term, does not write the same letter
        twice.
        """
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
