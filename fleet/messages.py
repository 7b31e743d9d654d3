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
    # Crawl tasks only (plain URLs leave these out): the crawl, the link depth from its
    # seeds, what to do with the URL, and the validators of the last fetch (recrawl).
    crawl: str | None = None
    depth: int = 0
    kind: Literal["page", "sitemap", "robots"] = "page"
    etag: str = ""
    last_modified: str = ""
    content_hash: str = ""


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
    # Cache validators of the response (conditional requests on a recrawl).
    etag: str = ""
    last_modified: str = ""
    # <meta name="robots" content="nofollow">: the page's links are not to be followed.
    nofollow: bool = False
    # The crawl (if any) the page was fetched for, and its depth there.
    crawl: str | None = None
    depth: int = 0


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


class RenderSample(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One of an undecided domain's sample renders (``render_samples`` slots per domain).

    Stored in the render-samples KV bucket, one key per slot: claimed by a worker before it
    renders (created only if absent, so at most ``render_samples`` are in flight fleet-wide),
    then filled with what the render showed. The worker filling the last slot decides.
    """

    domain: str
    slot: int
    claimed_at: float  # a claim older than render_timeout_s (its worker died) is taken over
    done: bool = False
    helped: bool = False  # rendering showed much more text than HTTP (rendering_helped)
    http_chars: int = 0
    rendered_chars: int = 0


CrawlScopeName = Literal["host", "domain", "prefix", "any"]


class CrawlSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A crawl job: what to follow from which seeds, and whether it was cancelled.

    Kept in the crawls KV bucket (one key per crawl id); everything but ``state`` is fixed
    when the crawl starts. "done" is not stored: it is read from the crawl's counters.
    """

    id: str
    seeds: list[str]
    scope: CrawlScopeName = "prefix"
    include: list[str] = msgspec.field(default_factory=list)
    exclude: list[str] = msgspec.field(default_factory=list)
    max_depth: int | None = None
    max_pages: int | None = None
    sitemaps: bool = False
    name: str = ""
    created_at: float = 0.0
    state: Literal["running", "cancelled"] = "running"
    cancelled_at: float = 0.0
    recrawl_of: str | None = None


class FrontierEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A URL's one entry in a crawl's seen-set (first writer wins, kept for the crawl's life).

    ``owner`` is the task that discovered it: when that task is redelivered it finds its
    own entries and queues them again (idempotently), where any other task skips them.
    """

    url: str
    depth: int = 0
    owner: str = ""
    verdict: str = ""  # "" queued, else the reason it was skipped (scope, filtered, ...)


class CrawlEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One counted event of a crawl (queued, fetched, skipped...): one message per URL and
    kind, deduplicated by its message id, so counters are message counts and stay exact."""

    url: str
    depth: int = 0
    detail: str = ""
    # fetched: the validators a recrawl sends back.
    etag: str = ""
    last_modified: str = ""
    content_hash: str = ""


class Skipped(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A URL not fetched on purpose (``reason``: scope, cancelled, robots...), kept in the
    skipped stream. Accounted for like a dead letter, but not one: nothing failed.

    Same record as the politeness work's (robots); ``crawl`` says which crawl skipped it.
    """

    url: str
    id: str
    reason: str
    detail: str = ""
    skipped_at: float
    source: str | None = None
    crawl: str | None = None


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
render_sample_encoder = msgspec.json.Encoder()
render_sample_decoder = msgspec.json.Decoder(RenderSample)
skipped_encoder = msgspec.json.Encoder()
skipped_decoder = msgspec.json.Decoder(Skipped)
robots_entry_encoder = msgspec.json.Encoder()
robots_entry_decoder = msgspec.json.Decoder(RobotsEntry)
host_state_encoder = msgspec.json.Encoder()
host_state_decoder = msgspec.json.Decoder(HostState)
crawl_spec_encoder = msgspec.json.Encoder()
crawl_spec_decoder = msgspec.json.Decoder(CrawlSpec)
frontier_entry_encoder = msgspec.json.Encoder()
frontier_entry_decoder = msgspec.json.Decoder(FrontierEntry)
crawl_event_encoder = msgspec.json.Encoder()
crawl_event_decoder = msgspec.json.Decoder(CrawlEvent)
skipped_encoder = msgspec.json.Encoder()
skipped_decoder = msgspec.json.Decoder(Skipped)

TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """The W3C trace-context headers of a message, to carry over to a dead letter."""
    if not headers:
        return {}
    return {k: headers[k] for k in TRACE_HEADERS if k in headers}


def fit_page(page: Page, max_bytes: int) -> bytes:
    """Encode a page so it fits in ``max_bytes``: cut text (marked), then links. Never fails."""
    data = page_encoder.encode(page)
    if len(data) <= max_bytes:
        return data
    bare = _replace(page, text="", text_truncated=True)
    # Pathological link lists: halve them until the page without text fits.
    while bare.links and len(page_encoder.encode(bare)) > max_bytes:
        bare = _replace(bare, links=bare.links[: len(bare.links) // 2])
    if len(page_encoder.encode(bare)) > max_bytes:
        bare = _replace(bare, headings=[], description=bare.description[:500])
    text = page.text.encode()
    keep = max(0, max_bytes - len(page_encoder.encode(bare)))
    while True:
        data = page_encoder.encode(_replace(bare, text=text[:keep].decode(errors="ignore")))
        if len(data) <= max_bytes or keep == 0:
            return data
        # JSON escaping (quotes, control characters) made it longer: cut the excess.
        keep = max(0, keep - (len(data) - max_bytes) - 16)


def _replace(page: Page, **changes: object) -> Page:
    return msgspec.structs.replace(page, **changes)
