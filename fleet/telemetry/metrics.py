"""Prometheus metrics: one ``CollectorRegistry`` per process (no global registry) holding
every role's metrics, served by one ``/metrics`` server.

``Metrics`` are the pipeline roles' (publisher, worker, indexer: ``Telemetry.serve_metrics``),
``SupervisorMetrics`` the supervisor's (its HTTP port serves them with ``render_metrics``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Metrics:
    """The Prometheus metrics of one role process, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.pages = Counter(
            "fleet_pages_fetched",
            "URLs handled by workers, by outcome (ok, retry, dead_letter).",
            ["outcome"],
            registry=r,
        )
        self.errors = Counter(
            "fleet_errors",
            "Failed handlings by stage, error class (transient, permanent, internal), reason.",
            ["stage", "error_class", "reason"],
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "fleet_fetch_duration_seconds", "HTTP fetch latency (redirects included).", registry=r
        )
        self.render_seconds = Histogram(
            "fleet_render_duration_seconds",
            "Browser render latency (navigation, scripts and settling).",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.renders = Counter(
            "fleet_renders",
            "Pages by how they were obtained (via http|browser), why (via_reason: spa_root, "
            "domain_learned, render_unavailable, ...) and outcome (ok, error, skipped).",
            ["via", "via_reason", "outcome"],
            registry=r,
        )
        self.browser_restarts = Counter(
            "fleet_browser_restarts",
            "Browser restarts by cause (crash, hang, rss, driver).",
            ["cause"],
            registry=r,
        )
        self.context_recycles = Counter(
            "fleet_browser_context_recycles",
            "Browser contexts closed after their page budget (render_context_pages).",
            registry=r,
        )
        self.in_flight = Gauge(
            "fleet_in_flight", "Messages being handled right now.", ["stage"], registry=r
        )
        self.docs_indexed = Counter(
            "fleet_docs_indexed", "Documents committed to the sink and acked.", registry=r
        )
        self.batch_seconds = Histogram(
            "fleet_indexer_batch_duration_seconds",
            "Indexer batch latency: decode, upsert, commit and settle.",
            registry=r,
        )
        self.redeliveries = Counter(
            "fleet_redeliveries",
            "Messages received again (delivery count > 1).",
            ["stage"],
            registry=r,
        )
        self.urls_published = Counter(
            "fleet_urls_published",
            "URL lines handled by the publisher, by result (published, duplicate, invalid).",
            ["result"],
            registry=r,
        )
        self.politeness = Counter(
            "fleet_politeness",
            "URLs held back on purpose, by event (parked, deferred, skipped) and why (delay, "
            "busy, paused, robots, queued, error).",
            ["event", "why"],
            registry=r,
        )
        self.parked = Gauge(
            "fleet_parked", "URLs a worker holds while their host's turn comes.", registry=r
        )
        self.http_requests = Counter(
            "fleet_http_requests",
            "Requests answered by `fleet serve`, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "fleet_http_request_duration_seconds",
            "Latency of `fleet serve` requests by route template (to the last body byte).",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.dead_letters = Counter(
            "fleet_dead_letters",
            "Messages written to the dead-letter stream, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )


class SupervisorMetrics:
    """The supervisor's Prometheus metrics, in its process's registry (never the global one).

    Served by the supervisor's own HTTP port beside /health and /workers (`render`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.lag = Gauge(
            "fleet_supervisor_lag", "Pending + unacked URLs of the workers' consumer.", registry=r
        )
        self.desired = Gauge(
            "fleet_supervisor_replicas_desired", "Workers the policy asks for.", registry=r
        )
        self.actual = Gauge(
            "fleet_supervisor_replicas_actual", "Workers running or starting.", registry=r
        )
        self.wanted = Gauge(
            "fleet_supervisor_replicas_wanted",
            "Workers the current lag alone asks for (before stabilisation).",
            registry=r,
        )
        self.events = Counter(
            "fleet_supervisor_scale_events",
            "Scale decisions carried out, by direction.",
            ["direction"],
            registry=r,
        )
        self.errors = Counter(
            "fleet_supervisor_errors",
            "Failed ticks by dependency (nats, backend).",
            ["dependency"],
            registry=r,
        )
        self.up = Gauge(
            "fleet_supervisor_dependency_up",
            "1 when the dependency answered at the last tick.",
            ["dependency"],
            registry=r,
        )
        self.alert = Gauge(
            "fleet_supervisor_alert",
            "1 while an alert is raised (consumer_missing: the workers' consumer is gone, so "
            "the lag is unknown and the replicas are held).",
            ["reason"],
            registry=r,
        )
        self.holds = Counter(
            "fleet_supervisor_holds",
            "Ticks that held the replica count because the lag could not be read, by reason "
            "(consumer_missing, lag_unreadable: NATS or the consumer's leader did not answer).",
            ["reason"],
            registry=r,
        )
        # Every series from the start, at 0, so rate() and alerts see them before the first
        # event (directions as in the supervisor's Decision.direction).
        for direction in ("up", "down"):
            self.events.labels(direction)
        for dep in ("nats", "backend"):
            self.errors.labels(dep)
        self.alert.labels("consumer_missing").set(0)
        for reason in ("consumer_missing", "lag_unreadable"):
            self.holds.labels(reason)

    def render(self) -> tuple[bytes, str]:
        """``/metrics`` body and Content-Type."""
        return render_metrics(self.registry)


def render_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """A registry in Prometheus' text format, with its Content-Type: for a ``/metrics``
    route on a role's own HTTP server (``Telemetry.serve_metrics`` needs none)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
