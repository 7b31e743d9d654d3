"""Prometheus metrics: one ``CollectorRegistry`` per process (no global registry) holding
every role's metrics, served by one ``/metrics`` server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.errors import PermanentError, TransientError

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


def error_class(error: BaseException) -> str:
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, TransientError):
        return "transient"
    return "internal"
