"""Observability for every role: logs, OpenTelemetry traces and Prometheus metrics.

``logs`` (text or JSON lines), ``metrics`` (one registry and one ``/metrics`` server per
process), ``tracing`` (the ``Telemetry`` object roles receive, and its setup), and its
hooks: ``hooks`` (the do-nothing ones), ``spans`` (steps), ``consuming`` (consumed
messages). This package imports nothing from the roles; the roles import it.
"""

from fleet.telemetry.hooks import NOOP, Hook
from fleet.telemetry.logs import JsonFormatter, setup_logging
from fleet.telemetry.metrics import Metrics, SupervisorMetrics, render_metrics
from fleet.telemetry.tracing import Telemetry, setup_telemetry, tracing_configured

__all__ = [
    "NOOP",
    "Hook",
    "JsonFormatter",
    "Metrics",
    "SupervisorMetrics",
    "Telemetry",
    "render_metrics",
    "setup_logging",
    "setup_telemetry",
    "tracing_configured",
]
