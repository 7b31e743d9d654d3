"""Observability for every role: logs, OpenTelemetry traces and Prometheus metrics.

Roles receive a ``Telemetry`` object and use it only through a few hooks around their
handling: ``processing`` (one message), ``batch``/``document`` (the indexer), ``fetching``
and ``stage`` (steps inside a handling), ``publishing`` (a message sent on, whose headers
get the trace context) and ``publish_headers`` (the publisher). ``Telemetry.disabled()``
returns one shared do-nothing hook from each of them, so with tracing and metrics off the
hot path pays a method call and nothing else: no spans, no headers, no dict work. The hooks
themselves are in ``hooks`` (the do-nothing ones), ``spans`` (steps) and ``consuming``
(consumed messages).

Tracing is the OpenTelemetry SDK configured by the standard ``OTEL_*`` variables (the SDK
reads them itself); it is on only when an OTLP endpoint is configured (the CLI checks with
``tracing_configured``). Context travels in NATS headers through the global OTel text-map
propagator (W3C ``traceparent``/``tracestate`` by default). Metrics live in one
``CollectorRegistry`` per process (no global registry), served on ``metrics_port``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from fleet.telemetry.consuming import BatchSpan, ProcessingSpan
from fleet.telemetry.hooks import (
    NOOP,
    NOOP_SERVING,
    Hook,
    MessageLike,
    ServingHook,
    TaskLike,
)
from fleet.telemetry.metrics import Metrics
from fleet.telemetry.spans import (
    MESSAGING_SYSTEM,
    CurrentSpan,
    FetchingSpan,
    ServingSpan,
    messaging_attributes,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider

# The hook names stay importable from here, where they were first defined.
__all__ = [
    "MESSAGING_SYSTEM",
    "NOOP",
    "NOOP_SERVING",
    "OTLP_ENDPOINT_VARS",
    "Hook",
    "MessageLike",
    "ServingHook",
    "TaskLike",
    "Telemetry",
    "setup_telemetry",
    "tracing_configured",
]

log = logging.getLogger(__name__)


# Standard variables that turn tracing on (read by the CLI, acted on by the OTel SDK).
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


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
                    **messaging_attributes(subject, "publish"),
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
        return ProcessingSpan(self, msg, stage, attempt, seq)

    def batch(self, msgs: Sequence[MessageLike], *, stage: str) -> Hook:
        """Around an indexer batch: a span linking every document's context, and per
        document a child span in its own trace (``document(i)``)."""
        if not self._enabled:
            return NOOP
        return BatchSpan(self, msgs, stage)

    def fetching(self, url: str, method: str = "GET") -> Hook:
        """Around one HTTP fetch (HTTP client span and the latency histogram)."""
        if not self._enabled:
            return NOOP
        return FetchingSpan(self, url, method)

    def stage(self, name: str) -> Hook:
        """Around an internal step (e.g. "extract"): a child span."""
        if self.tracer is None:
            return NOOP
        return CurrentSpan(self, name, SpanKind.INTERNAL, None)

    def serving(self, method: str, path: str) -> ServingHook:
        """Around one HTTP request of `fleet serve`: a server span and the request metrics.
        Call ``routed(template)`` once the route is known, ``response(status)`` on reply."""
        if not self._enabled:
            return NOOP_SERVING
        return ServingSpan(self, method, path)

    def publishing(self, subject: str, headers: dict[str, str], *, message_id: str) -> Hook:
        """Around sending a message on: a producer span whose context goes into ``headers``."""
        if self.tracer is None:
            return NOOP
        hook = CurrentSpan(
            self,
            f"publish {subject}",
            SpanKind.PRODUCER,
            {**messaging_attributes(subject, "publish"), "messaging.message.id": message_id},
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
