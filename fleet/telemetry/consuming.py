"""Hooks around consumed messages: a worker's message, an indexer's batch and its documents.

Each message's span continues the trace in its headers (the propagator extracts it), carries
the delivery attempt, and ends with the ``Settler``'s decision (``settled``) on it and in
the outcome counters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind

from fleet.errors import error_class, error_reason
from fleet.telemetry.hooks import Hook, MessageLike
from fleet.telemetry.spans import detach, end_span, messaging_attributes, record_error

if TYPE_CHECKING:
    from fleet.telemetry.metrics import Metrics
    from fleet.telemetry.tracing import Telemetry


def _message_attributes(
    msg: MessageLike, operation: str, attempt: int, seq: int
) -> dict[str, str | int]:
    headers = msg.headers or {}
    return {
        **messaging_attributes(msg.subject, operation),
        "messaging.message.id": headers.get("Nats-Msg-Id") or str(seq),
        # Retries are visible on every attempt's span.
        "messaging.nats.delivered_count": attempt,
        "messaging.nats.stream_sequence": seq,
        "fleet.attempt": attempt,
    }


def _annotate_outcome(
    span: trace.Span,
    error: BaseException | None,
    *,
    action: str,
    reason: str,
    dead_letter: bool,
    attempt: int,
) -> None:
    span.set_attribute("fleet.outcome", action)
    if error is not None:
        record_error(span, error)
    if action == "nak":
        span.add_event("nak", {"fleet.reason": reason})
    elif dead_letter:
        span.set_attribute("fleet.dead_lettered", True)
        span.add_event("dead_letter", {"fleet.reason": reason, "fleet.attempts": attempt})


def _count_outcome(
    metrics: Metrics,
    stage: str,
    error: BaseException | None,
    *,
    action: str,
    reason: str,
    dead_letter: bool,
) -> None:
    if error is not None:
        metrics.errors.labels(stage, error_class(error), error_reason(error)).inc()
    if action == "term" and dead_letter:
        metrics.dead_letters.labels(stage, reason).inc()
    if stage == "worker":
        outcome = {"ack": "ok", "nak": "retry"}.get(
            action, "dead_letter" if dead_letter else action
        )
        metrics.pages.labels(outcome).inc()
    elif stage == "indexer" and action == "ack":
        metrics.docs_indexed.inc()


class _MessageHook(Hook):
    """A message's span (worker processing, or one indexer document): url and outcome."""

    __slots__ = ()
    _span: trace.Span | None
    _attempt: int
    _stage: str
    _telemetry: Telemetry

    def set_url(self, url: str) -> None:
        if self._span is not None:
            self._span.set_attribute("url.full", url)

    def settled(
        self, error: BaseException | None, *, action: str, reason: str, dead_letter: bool
    ) -> None:
        if self._span is not None:
            _annotate_outcome(
                self._span,
                error,
                action=action,
                reason=reason,
                dead_letter=dead_letter,
                attempt=self._attempt,
            )
        metrics = self._telemetry.metrics
        if metrics is not None:
            _count_outcome(
                metrics, self._stage, error, action=action, reason=reason, dead_letter=dead_letter
            )


class ProcessingSpan(_MessageHook):
    """The handling of one message: its "process" span, in-flight and redelivery counts."""

    __slots__ = ("_attempt", "_msg", "_seq", "_span", "_stage", "_telemetry", "_token")

    def __init__(
        self, telemetry: Telemetry, msg: MessageLike, stage: str, attempt: int, seq: int
    ) -> None:
        self._telemetry = telemetry
        self._msg = msg
        self._stage = stage
        self._attempt = attempt
        self._seq = seq
        self._span: trace.Span | None = None
        self._token: Token[Context] | None = None

    def __enter__(self) -> Self:
        metrics = self._telemetry.metrics
        if metrics is not None:
            metrics.in_flight.labels(self._stage).inc()
            if self._attempt > 1:
                metrics.redeliveries.labels(self._stage).inc()
        tracer = self._telemetry.tracer
        if tracer is not None:
            msg = self._msg
            parent = self._telemetry.propagator.extract(msg.headers or {}, context=Context())
            self._span = tracer.start_span(
                f"process {msg.subject}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=_message_attributes(msg, "process", self._attempt, self._seq),
            )
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics = self._telemetry.metrics
        if metrics is not None:
            metrics.in_flight.labels(self._stage).dec()
        if self._span is not None:
            if exc is not None:
                # Cancelled by the drain deadline (the message was nak'ed) or a bug.
                self._span.set_attribute("fleet.outcome", "nak")
            end_span(self._span, self._token, exc)


class _Document(_MessageHook):
    """One document of an indexer batch: a span in the document's own trace."""

    __slots__ = ("_attempt", "_batch", "_ended", "_span", "_stage", "_telemetry", "_token")

    def __init__(self, batch: BatchSpan, span: trace.Span | None, attempt: int) -> None:
        self._batch = batch
        self._telemetry = batch.telemetry
        self._stage = batch.stage
        self._span = span
        self._attempt = attempt
        self._token: Token[Context] | None = None
        self._ended = False

    def __enter__(self) -> Self:
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            detach(self._token)
            self._token = None
        if exc is not None and self._span is not None:
            record_error(self._span, exc)
        self.end()

    def end(self) -> None:
        if not self._ended and self._span is not None:
            self._span.end()
        self._ended = True


class BatchSpan(Hook):
    """An indexer batch: a span linking every document's context, and per document a
    child span in its own trace (``document(i)``)."""

    __slots__ = ("_docs", "_msgs", "_span", "_started", "_token", "stage", "telemetry")

    def __init__(self, telemetry: Telemetry, msgs: Sequence[MessageLike], stage: str) -> None:
        self.telemetry = telemetry
        self._msgs = msgs
        self.stage = stage
        self._docs: list[_Document] = []
        self._span: trace.Span | None = None
        self._token: Token[Context] | None = None
        self._started = 0.0

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        attempts = [_delivered(msg) for msg in self._msgs]
        metrics = self.telemetry.metrics
        if metrics is not None:
            metrics.in_flight.labels(self.stage).inc(len(self._msgs))
            redelivered = sum(1 for a in attempts if a > 1)
            if redelivered:
                metrics.redeliveries.labels(self.stage).inc(redelivered)
        tracer = self.telemetry.tracer
        if tracer is None:
            self._docs = [_Document(self, None, a) for a in attempts]
            return self
        empty = Context()
        extract = self.telemetry.propagator.extract
        parents = [extract(m.headers or {}, context=empty) for m in self._msgs]
        links = [
            Link(sc)
            for p in parents
            if (sc := trace.get_current_span(p).get_span_context()).is_valid
        ]
        subject = self._msgs[0].subject if self._msgs else ""
        self._span = tracer.start_span(
            f"process {subject}",
            context=empty,  # its own trace; the documents' traces are linked
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **messaging_attributes(subject, "process"),
                "messaging.batch.message_count": len(self._msgs),
            },
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        batch_link = [Link(self._span.get_span_context())]
        for msg, parent, attempt in zip(self._msgs, parents, attempts, strict=True):
            span = tracer.start_span(
                f"index {msg.subject}",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=batch_link,
                attributes=_message_attributes(msg, "process", attempt, _sequence(msg)),
            )
            self._docs.append(_Document(self, span, attempt))
        return self

    def document(self, index: int) -> Hook:
        """The hook of the ``index``-th message of the batch."""
        return self._docs[index]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics = self.telemetry.metrics
        if metrics is not None:
            metrics.in_flight.labels(self.stage).dec(len(self._msgs))
            metrics.batch_seconds.observe(time.perf_counter() - self._started)
        for doc in self._docs:
            doc.end()  # documents never settled (stopping while the sink was down)
        if self._span is not None:
            end_span(self._span, self._token, exc)


def _delivered(msg: MessageLike) -> int:
    meta = getattr(msg, "metadata", None)
    return int(getattr(meta, "num_delivered", None) or 1)


def _sequence(msg: MessageLike) -> int:
    meta = getattr(msg, "metadata", None)
    seq = getattr(meta, "sequence", None)
    return int(getattr(seq, "stream", None) or 0)
