"""Wire messages: every payload that crosses NATS is one of these Structs.

JSON on the wire (readable with `nats sub`), one reusable encoder/decoder per type.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class UrlTask(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One URL to fetch, as published to the URLs stream."""

    url: str
    id: str
    published_at: float
    source: str | None = None
    # Fetch attempts made on earlier messages of this URL: a URL deferred for politeness
    # comes back as a new message, and its attempts still count towards max_deliver.
    attempts: int = 0


class Page(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a worker extracted from one URL; published to the results stream."""

    id: str
    url: str
    final_url: str
    canonical_url: str
    status: int
    content_type: str
    title: str = ""
    description: str = ""
    headings: list[str] = msgspec.field(default_factory=list)
    text: str = ""
    text_truncated: bool = False
    lang: str = ""
    links: list[str] = msgspec.field(default_factory=list)
    content_hash: str = ""
    fetched_at: float = 0.0
    fetch_ms: float = 0.0
    via: Literal["http", "browser"] = "http"
    via_reason: str = ""
    attempt: int = 1


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A URL (or result) that will not be retried, with why and how often it was tried."""

    url: str
    id: str
    stage: Literal["worker", "indexer"]
    reason: str
    error: str
    attempts: int
    failed_at: float
    # Original payload, so a replay needs nothing but the dead letter itself.
    payload: bytes = b""
    # Trace context of the original message (traceparent/tracestate): a replay joins the
    # URL's original trace instead of starting a new one.
    trace_headers: dict[str, str] = msgspec.field(default_factory=dict)


class RenderDecision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the fleet learned about one domain: do its pages need a browser?

    Stored in the render KV bucket (one key per domain), read by every worker.
    """

    domain: str
    needs_render: bool
    samples: int
    http_chars: int = 0  # mean visible text over HTTP in the samples
    rendered_chars: int = 0  # mean visible text after rendering
    decided_at: float = 0.0


class Skipped(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A URL not fetched on purpose (``reason``: robots), kept in the skipped stream.

    Accounted for like a dead letter, but not one: nothing failed and nothing is replayed.
    """

    url: str
    id: str
    reason: str
    detail: str = ""
    skipped_at: float
    source: str | None = None


class RobotsEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One origin's robots.txt as the fleet fetched it (robots KV bucket, key per origin).

    ``status``: ``ok`` (rules in ``body``), ``unavailable`` (4xx and the like: everything
    allowed) or ``unreachable`` (5xx, network: everything disallowed until ``expires_at``).
    """

    origin: str
    status: Literal["ok", "unavailable", "unreachable"]
    fetched_at: float
    expires_at: float
    http_status: int = 0
    body: str = ""
    sitemaps: list[str] = msgspec.field(default_factory=list)
    error: str = ""
    failures: int = 0  # consecutive unreachable fetches (the retry interval doubles)


class HostState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fleet-wide limiter state of one origin (hosts KV bucket), changed by compare-and-set.

    Times are Unix seconds (the workers' clocks, kept in step by NTP).
    """

    origin: str
    next_at: float = 0.0  # earliest start of the next request
    delay_s: float = 0.0  # adaptive delay in force, when above the configured one
    paused_until: float = 0.0  # Retry-After: no request before this
    throttled: int = 0  # consecutive 429/503 answers
    leases: dict[str, float] = msgspec.field(default_factory=dict)  # lease id -> expires at


url_task_encoder = msgspec.json.Encoder()
url_task_decoder = msgspec.json.Decoder(UrlTask)
page_encoder = msgspec.json.Encoder()
page_decoder = msgspec.json.Decoder(Page)
dead_letter_encoder = msgspec.json.Encoder()
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
render_decision_encoder = msgspec.json.Encoder()
render_decision_decoder = msgspec.json.Decoder(RenderDecision)
skipped_encoder = msgspec.json.Encoder()
skipped_decoder = msgspec.json.Decoder(Skipped)
robots_entry_encoder = msgspec.json.Encoder()
robots_entry_decoder = msgspec.json.Decoder(RobotsEntry)
host_state_encoder = msgspec.json.Encoder()
host_state_decoder = msgspec.json.Decoder(HostState)

TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """The W3C trace-context headers of a message, to carry over to a dead letter."""
    if not headers:
        return {}
    return {k: headers[k] for k in TRACE_HEADERS if k in headers}
