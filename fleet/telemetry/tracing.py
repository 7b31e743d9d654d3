"""Observability for every role: logs, OpenTelemetry traces and Prometheus metrics.

Roles receive a ``Telemetry`` object and use it only through a few hooks around their
handling: ``processing`` (one message), ``batch``/``document`` (the indexer), ``fetching``
and ``stage`` (steps inside a handling), ``publishing`` (a message sent on, whose headers
get the trace context) and ``publish_headers`` (the publisher). ``Telemetry.disabled()``
returns one shared do-nothing hook from each of them, so with tracing and metrics off the
hot path pays a method call and nothing else: no spans, no headers, no dict work.

Tracing is the OpenTelemetry SDK configured by the standard ``OTEL_*`` variables (the SDK
reads them itself); it is on only when an OTLP endpoint is configured (the CLI checks with
``tracing_configured``). Context travels in NATS headers through the global OTel text-map
propagator (W3C ``traceparent``/``tracestate`` by default). Metrics live in one
``CollectorRegistry`` per process (no global registry), served on ``metrics_port``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from fleet.errors import HttpStatusError, error_class, error_reason

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util.types import Attributes
from fleet.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


MESSAGING_SYSTEM = "nats"


# Standard variables that turn tracing on (read by the CLI, acted on by the OTel SDK).
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class MessageLike(Protocol):
    """The part of a nats-py ``Msg`` the hooks read."""

    @property
    def subject(self) -> str:
        """The subject the message was published on."""

    @property
    def headers(self) -> dict[str, str] | None:
        """Its NATS headers (the trace context among them), or None."""


class TaskLike(Protocol):
    """The part of a ``UrlTask`` the publish hook reads."""

    @property
    def url(self) -> str:
        """The URL to fetch."""

    @property
    def id(self) -> str:
        """The URL's id, also the message's dedup id."""


class Hook:
    """A ``with`` block around a step; this base (tracing and metrics off) does nothing."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set_url(self, url: str) -> None:
        """The URL is known (after decoding the message)."""

    def response(self, status: int) -> None:
        """An HTTP response status (fetching)."""

    def settled(
        self, error: BaseException | None, *, action: str, reason: str, dead_letter: bool
    ) -> None:
        """The message was acked, nak'ed or terminated (``action``), after ``error``."""

    def document(self, index: int) -> Hook:
        """The hook of the ``index``-th message of a batch."""
        return self


NOOP = Hook()


class ServingHook(Hook):
    """A ``with`` block around one HTTP request (this base does nothing)."""

    __slots__ = ()

    def routed(self, route: str) -> None:
        """The request matched this route template (``/api/pages/{page_id}``)."""


NOOP_SERVING = ServingHook()


class Telemetry:
    """Tracing and metrics of one role process, passed to the roles' constructors."""

    def __init__(
        self,
        role: str,
        *,
        tracer_provider: TracerProvider | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.role = role
        self.metrics = metrics
        self._provider = tracer_provider
        self.tracer: trace.Tracer | None = None
        if tracer_provider is not None:
            from opentelemetry import propagate

            self.tracer = tracer_provider.get_tracer("fleet")
            # The global text-map propagator: W3C trace context and baggage unless
            # OTEL_PROPAGATORS says otherwise.
            self.propagator: TextMapPropagator = propagate.get_global_textmap()
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._enabled = self.tracer is not None or metrics is not None

    def published(self, result: str, count: int = 1) -> None:
        """Count URL lines handled by the publisher (published, duplicate, invalid)."""
        if self.metrics is not None and count:
            self.metrics.urls_published.labels(result).inc(count)

    def dead_lettered(self, stage: str, reason: str) -> None:
        """Count a dead letter written outside a message hook (the sweep of stranded URLs)."""
        if self.metrics is not None:
            self.metrics.dead_letters.labels(stage, reason).inc()

    def rendered(self, via: str, via_reason: str, outcome: str, seconds: float | None) -> None:
        """Count how one page was obtained; ``seconds`` is the browser time, if it rendered."""
        if self.metrics is not None:
            self.metrics.renders.labels(via, via_reason, outcome).inc()
            if seconds is not None:
                self.metrics.render_seconds.observe(seconds)

    def browser_restarted(self, cause: str) -> None:
        """Count a browser restart by ``cause`` (``crash``, ``hang``, ``rss``, ``driver``)."""
        if self.metrics is not None:
            self.metrics.browser_restarts.labels(cause).inc()

    def context_recycled(self) -> None:
        """Count a browser context closed after its page budget."""
        if self.metrics is not None:
            self.metrics.context_recycles.inc()

    def polite(self, event: str, why: str) -> None:
        """Count a politeness decision: parked, deferred or skipped, and why (delay, busy,
        paused, robots, error)."""
        if self.metrics is not None:
            self.metrics.politeness.labels(event, why).inc()

    def parked(self, count: int) -> None:
        """URLs this worker holds for their host's turn right now."""
        if self.metrics is not None:
            self.metrics.parked.set(count)

    @classmethod
    def disabled(cls, role: str = "fleet") -> Telemetry:
        """Tracing and metrics off: every hook is the shared do-nothing one."""
        return cls(role)

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded (a tracer provider was given)."""
        return self.tracer is not None

    # -- life cycle

    def serve_metrics(self, port: int, host: str = "") -> int:
        """Serve ``/metrics`` on ``host:port`` (every interface when host is empty: the
        scraper runs elsewhere); returns the bound port (``port=0`` picks a free one)."""
        from prometheus_client import start_http_server

        if self.metrics is None:
            self.metrics = Metrics()
            self._enabled = True
        addr = host or "0.0.0.0"  # noqa: S104
        self._server, self._server_thread = start_http_server(
            port, addr=addr, registry=self.metrics.registry
        )
        bound: int = self._server.server_port
        log.info("serving metrics on %s:%d/metrics", addr, bound)
        return bound

    def shutdown(self) -> None:
        """Flush spans still buffered (on exit and SIGTERM) and stop the metrics server."""
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception as exc:
                log.warning("could not flush traces: %s", exc)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- hooks

    def publish_headers(self, subject: str) -> Callable[[TaskLike], dict[str, str]] | None:
        """For ``Publisher(headers_for=...)``: a short "publish" span per URL, its context
        in the headers. ``None`` when tracing is off (the publisher then adds nothing)."""
        tracer = self.tracer
        if tracer is None:
            return None

        def headers_for(task: TaskLike) -> dict[str, str]:
            # A new trace per URL: the root of everything that later happens to it.
            span = tracer.start_span(
                f"publish {subject}",
                context=Context(),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": MESSAGING_SYSTEM,
                    "messaging.destination.name": subject,
                    "messaging.operation.type": "publish",
                    "messaging.operation.name": "publish",
                    "messaging.message.id": task.id,
                    "url.full": task.url,
                },
            )
            headers: dict[str, str] = {}
            self.propagator.inject(headers, context=trace.set_span_in_context(span))
            span.end()
            return headers

        return headers_for

    def processing(self, msg: MessageLike, *, stage: str, attempt: int, seq: int = 0) -> Hook:
        """Around the handling of one message (its "process" span, in-flight, outcome)."""
        if not self._enabled:
            return NOOP
        return _Processing(self, msg, stage, attempt, seq)

    def batch(self, msgs: Sequence[MessageLike], *, stage: str) -> Hook:
        """Around an indexer batch: a span linking every document's context, and per
        document a child span in its own trace (``document(i)``)."""
        if not self._enabled:
            return NOOP
        return _Batch(self, msgs, stage)

    def fetching(self, url: str, method: str = "GET") -> Hook:
        """Around one HTTP fetch (HTTP client span and the latency histogram)."""
        if not self._enabled:
            return NOOP
        return _Fetching(self, url, method)

    def stage(self, name: str) -> Hook:
        """Around an internal step (e.g. "extract"): a child span."""
        if self.tracer is None:
            return NOOP
        return _Span(self, name, SpanKind.INTERNAL, None)

    def serving(self, method: str, path: str) -> ServingHook:
        """Around one HTTP request of `fleet serve`: a server span and the request metrics.
        Call ``routed(template)`` once the route is known, ``response(status)`` on reply."""
        if not self._enabled:
            return NOOP_SERVING
        return _Serving(self, method, path)

    def publishing(self, subject: str, headers: dict[str, str], *, message_id: str) -> Hook:
        """Around sending a message on: a producer span whose context goes into ``headers``."""
        if self.tracer is None:
            return NOOP
        hook = _Span(
            self,
            f"publish {subject}",
            SpanKind.PRODUCER,
            {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": subject,
                "messaging.operation.type": "publish",
                "messaging.operation.name": "publish",
                "messaging.message.id": message_id,
            },
        )
        hook.inject_into = headers
        return hook


def tracing_configured(env: Mapping[str, str]) -> bool:
    """True when the standard OTel variables ask for trace export (an OTLP endpoint set,
    the SDK not disabled). The CLI passes the process environment; library code never reads it."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in OTLP_ENDPOINT_VARS)


def setup_telemetry(role: str, *, tracing: bool, metrics_port: int = 0) -> Telemetry:
    """The Telemetry of a role process: an OTLP/HTTP exporter when ``tracing`` (endpoint,
    service name, sampler, batch delay… from the ``OTEL_*`` variables, read by the SDK),
    and ``/metrics`` on ``metrics_port`` when it is not 0."""
    provider: TracerProvider | None = None
    if tracing:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: f"fleet-{role}"}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    telemetry = Telemetry(
        role, tracer_provider=provider, metrics=Metrics() if metrics_port else None
    )
    if metrics_port:
        telemetry.serve_metrics(metrics_port)
    return telemetry


def _record_error(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{error_reason(error)}: {error}"[:500]))
    span.set_attribute("error.type", error_reason(error))


class _Span(Hook):
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
        if exc is not None:
            _record_error(self.span, exc)
        _detach(self._token)
        self.span.end()


class _Fetching(Hook):
    __slots__ = ("_method", "_span", "_started", "_telemetry", "_url")

    def __init__(self, telemetry: Telemetry, url: str, method: str) -> None:
        self._telemetry = telemetry
        self._url = url
        self._method = method
        self._span: _Span | None = None
        self._started = 0.0

    def __enter__(self) -> Self:
        tracer = self._telemetry.tracer
        if tracer is not None:
            self._span = _Span(
                self._telemetry,
                self._method,
                SpanKind.CLIENT,
                {"http.request.method": self._method, "url.full": self._url},
            )
            self._span.__enter__()
        self._started = time.perf_counter()
        return self

    def response(self, status: int) -> None:
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


class _Serving(ServingHook):
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
        self._route = route
        if self._span is not None:
            self._span.set_attribute("http.route", route)
            self._span.update_name(f"{self._method} {route}")

    def response(self, status: int) -> None:
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
            if exc is not None:
                _record_error(self._span, exc)
            _detach(self._token)
            self._span.end()


def _message_attributes(
    msg: MessageLike, operation: str, attempt: int, seq: int
) -> dict[str, str | int]:
    headers = msg.headers or {}
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": msg.subject,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
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
        _record_error(span, error)
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


class _Processing(_MessageHook):
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
                _record_error(self._span, exc)
            _detach(self._token)
            self._span.end()


class _Document(_MessageHook):
    """One document of an indexer batch: a span in the document's own trace."""

    __slots__ = ("_attempt", "_batch", "_ended", "_span", "_stage", "_telemetry", "_token")

    def __init__(self, batch: _Batch, span: trace.Span | None, attempt: int) -> None:
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
            _detach(self._token)
            self._token = None
        if exc is not None and self._span is not None:
            _record_error(self._span, exc)
        self.end()

    def end(self) -> None:
        if not self._ended and self._span is not None:
            self._span.end()
        self._ended = True


class _Batch(Hook):
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
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": subject,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
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
            if exc is not None:
                _record_error(self._span, exc)
            _detach(self._token)
            self._span.end()


def _delivered(msg: MessageLike) -> int:
    meta = getattr(msg, "metadata", None)
    return int(getattr(meta, "num_delivered", None) or 1)


def _sequence(msg: MessageLike) -> int:
    meta = getattr(msg, "metadata", None)
    seq = getattr(meta, "sequence", None)
    return int(getattr(seq, "stream", None) or 0)


def _detach(token: Token[Context] | None) -> None:
    if token is not None:
        otel_context.detach(token)
