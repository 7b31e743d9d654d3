"""Logs: text for people, one JSON object per line for pipelines (with the trace ids)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    pass


_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, logger, message, url, trace_id, span_id.

    ``url`` comes from ``extra={"url": ...}``; trace and span ids from the span current when
    the line was logged (``null`` outside a span or with tracing off).
    """

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line; ``extra=`` fields become keys, an exception ``exc``."""
        span_context = trace.get_current_span().get_span_context()
        traced = span_context.is_valid
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "message": record.getMessage(),
            "url": None,
            "trace_id": trace.format_trace_id(span_context.trace_id) if traced else None,
            "span_id": trace.format_span_id(span_context.span_id) if traced else None,
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(role: str, *, level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr, as text or JSON lines (``fmt``), at ``level``; replaces the root's handlers.

    nats-py's logger is silenced below CRITICAL: it reports every reconnect attempt as an
    error, and the roles' connection callbacks log the state changes that matter.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py reports every reconnect attempt as an error; our callbacks log state changes.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
