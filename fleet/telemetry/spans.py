"""Spans around the steps inside a handling: a stage, a message sent on, a fetch, a request.

Also the span helpers every recording hook shares: the messaging attributes, how an error
is recorded, and how a span made current for a ``with`` block is ended.
"""

from __future__ import annotations

import time
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from fleet.errors import HttpStatusError, error_reason
from fleet.telemetry.hooks import Hook, ServingHook

if TYPE_CHECKING:
    from opentelemetry.util.types import Attributes

    from fleet.telemetry.tracing import Telemetry

MESSAGING_SYSTEM = "nats"


def messaging_attributes(subject: str, operation: str) -> dict[str, str | int]:
    """The attributes every message span has: system, destination and operation."""
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


def record_error(span: trace.Span, error: BaseException) -> None:
    """Record ``error`` on ``span``: the exception, status ERROR and its reason."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{error_reason(error)}: {error}"[:500]))
    span.set_attribute("error.type", error_reason(error))


def detach(token: Token[Context] | None) -> None:
    """Restore the context from before ``attach`` (nothing when none was attached)."""
    if token is not None:
        otel_context.detach(token)


def end_span(span: trace.Span, token: Token[Context] | None, error: BaseException | None) -> None:
    """End a span made current with ``token``, recording ``error`` if one escaped."""
    if error is not None:
        record_error(span, error)
    detach(token)
    span.end()


class CurrentSpan(Hook):
    """A span that is current for the ``with`` block; errors escaping it are recorded."""

    __slots__ = ("_attributes", "_kind", "_name", "_telemetry", "_token", "inject_into", "span")

    def __init__(
        self, telemetry: Telemetry, name: str, kind: SpanKind, attributes: Attributes
    ) -> None:
        self._telemetry = telemetry
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._token: Token[Context] | None = None
        self.inject_into: dict[str, str] | None = None
        self.span: trace.Span = trace.INVALID_SPAN

    def __enter__(self) -> Self:
        tracer = self._telemetry.tracer
        assert tracer is not None
        self.span = tracer.start_span(self._name, kind=self._kind, attributes=self._attributes)
        ctx = trace.set_span_in_context(self.span)
        self._token = otel_context.attach(ctx)
        if self.inject_into is not None:
            self._telemetry.propagator.inject(self.inject_into, context=ctx)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end_span(self.span, self._token, exc)


class FetchingSpan(Hook):
    """One HTTP fetch: an HTTP client span (tracing on) and the fetch latency (metrics on)."""

    __slots__ = ("_method", "_span", "_started", "_telemetry", "_url")

    def __init__(self, telemetry: Telemetry, url: str, method: str) -> None:
        self._telemetry = telemetry
        self._url = url
        self._method = method
        self._span: CurrentSpan | None = None
        self._started = 0.0

    def __enter__(self) -> Self:
        tracer = self._telemetry.tracer
        if tracer is not None:
            self._span = CurrentSpan(
                self._telemetry,
                self._method,
                SpanKind.CLIENT,
                {"http.request.method": self._method, "url.full": self._url},
            )
            self._span.__enter__()
        self._started = time.perf_counter()
        return self

    def response(self, status: int) -> None:
        """The response status goes on the span."""
        if self._span is not None:
            self._span.span.set_attribute("http.response.status_code", status)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics = self._telemetry.metrics
        if metrics is not None:
            metrics.fetch_seconds.observe(time.perf_counter() - self._started)
        if self._span is not None:
            if isinstance(exc, HttpStatusError):
                self._span.span.set_attribute("http.response.status_code", exc.status)
            self._span.__exit__(exc_type, exc, tb)


class ServingSpan(ServingHook):
    """One HTTP request of `fleet serve`: a server span and the request metrics."""

    __slots__ = ("_method", "_route", "_span", "_started", "_status", "_telemetry", "_token")

    def __init__(self, telemetry: Telemetry, method: str, path: str) -> None:
        self._telemetry = telemetry
        self._method = method
        self._route = "unmatched"
        self._status = 0
        self._started = 0.0
        self._token: Token[Context] | None = None
        self._span: trace.Span | None = None
        if telemetry.tracer is not None:
            self._span = telemetry.tracer.start_span(
                method,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path},
            )

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def routed(self, route: str) -> None:
        """The route names the span and labels the metrics."""
        self._route = route
        if self._span is not None:
            self._span.set_attribute("http.route", route)
            self._span.update_name(f"{self._method} {route}")

    def response(self, status: int) -> None:
        """The status goes on the span (a 5xx is an error) and labels the metrics."""
        self._status = status
        if self._span is not None:
            self._span.set_attribute("http.response.status_code", status)
            if status >= 500:
                self._span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics = self._telemetry.metrics
        if metrics is not None:
            status = str(self._status or (500 if exc is not None else 0))
            metrics.http_requests.labels(self._route, self._method, status).inc()
            metrics.http_seconds.labels(self._route).observe(time.perf_counter() - self._started)
        if self._span is not None:
            end_span(self._span, self._token, exc)
