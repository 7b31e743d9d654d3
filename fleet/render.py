"""Browser rendering: when a page needs JavaScript, the pool of Chromium pages that runs it.

Three parts, one role:

* ``assess`` — a pure heuristic over the HTTP body and its extracted text: does this page
  look like JavaScript builds its content (empty SPA root, little text against a lot of
  script, a <noscript> asking for JavaScript)?
* ``RenderPolicy`` + ``KvDecisionStore`` — per-domain learning: borderline pages of an
  unknown domain are rendered as samples; once enough samples agree, the decision is put
  into a JetStream key-value bucket that every worker reads, so the fleet learns once.
* ``BrowserPool`` — one Chromium per worker process, a bounded number of open pages,
  contexts recycled after a page budget, the browser restarted when it crashes, hangs or
  grows past its memory cap. Every request the browser makes is intercepted and fulfilled
  by our own guarded fetch code (``ResourceFetcher``): the browser never opens a connection
  itself, so it cannot be used to reach private addresses.

Playwright is an optional extra: it is imported only when a pool is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self
from urllib.parse import urlsplit

import aiohttp
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError
from yarl import URL

from fleet.errors import (
    BlockedAddress,
    BrowserCrashed,
    FleetError,
    InvalidUrl,
    RenderFailed,
    RenderTimeout,
    RenderUnavailable,
)
from fleet.fetch import REDIRECT_STATUSES, FetchResult
from fleet.messages import RenderDecision, render_decision_decoder, render_decision_encoder
from fleet.netguard import GuardedResolver, HostPolicy, check_url
from fleet.settings import Settings

if TYPE_CHECKING:
    from nats.js.kv import KeyValue
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Playwright,
        Request,
        Route,
    )

log = logging.getLogger(__name__)

DEBIAN_CHROMIUM: Final = "/usr/bin/chromium"
# Every host name resolves to "not found": a request the route handler did not fulfil
# (a WebSocket, a prefetch, anything outside the interception) cannot reach the network.
# Route fulfilment does not resolve anything, so rendering still works (tested).
BLOCK_ALL_DNS: Final = "--host-resolver-rules=MAP * ~NOTFOUND"
CHROMIUM_ARGS: Final = (
    "--no-sandbox",  # workers run unprivileged in containers without user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers' default 64 MB /dev/shm crashes tabs otherwise
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-extensions",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    # A reused page would otherwise keep the previous documents alive for "back".
    "--disable-features=BackForwardCache",
    BLOCK_ALL_DNS,
)
BLOCKABLE_RESOURCES: Final = frozenset({"image", "font", "media"})
ROUTED_METHODS: Final = frozenset({"GET", "HEAD"})
# Headers the browser may pass on to a site; cookies and auth never leave the worker.
FORWARDED_HEADERS: Final = frozenset({"accept", "accept-language", "referer", "content-type"})
# Response headers that describe the wire, not the body our code hands the browser.
DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {"content-encoding", "content-length", "transfer-encoding", "connection", "set-cookie"}
)
MEMORY_CHECK_INTERVAL_S: Final = 2.0
DECISION_TTL_S: Final = 7 * 24 * 3600.0
HANG_PROBE_TIMEOUT_S: Final = 5.0
DOM_QUIET_MS: Final = 100
# Renders per browser page before it is closed: reuse saves opening a page each time, but
# a page's renderer grows with every document it has shown (measured: ~2 MB per render,
# without a plateau), so a page is replaced after this many.
PAGE_REUSE_LIMIT: Final = 10

Verdict = Literal["render", "sample", "http"]

# --------------------------------------------------------------------------------------
# The heuristic


_SPA_ROOT: Final = re.compile(
    rb"<(?:div|main|section|body)\b[^>]*"
    rb"(?:\bid\s*=\s*[\"']?(?:root|app|__next|__nuxt|svelte|q-app|main-app)[\"'\s>]"
    rb"|\bdata-reactroot\b|\bng-version\b|\bng-app\b)"
    rb"[^>]*>\s*(?:<noscript\b[^>]*>.*?</noscript>\s*)?</(?:div|main|section|body)>",
    re.IGNORECASE | re.DOTALL,
)
_SCRIPT: Final = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
_SRC_ATTR: Final = re.compile(rb"\bsrc\s*=", re.IGNORECASE)
_JSON_TYPE: Final = re.compile(rb"\btype\s*=\s*[\"']?application/(?:ld\+)?json", re.IGNORECASE)
_NOSCRIPT: Final = re.compile(rb"<noscript\b[^>]*>(.*?)</noscript\s*>", re.IGNORECASE | re.DOTALL)
_NEEDS_JS: Final = re.compile(
    rb"(?:enable|activate|turn on|requires?|need|needs)\b[^<]{0,40}javascript"
    rb"|javascript[^<]{0,40}(?:required|enabled|disabled|is off)",
    re.IGNORECASE,
)
# An external script weighs like this many characters of inline code: its size is unknown,
# but a bundle loaded from the page is rarely small.
EXTERNAL_SCRIPT_WEIGHT: Final = 2000
THIN_TEXT_CHARS: Final = 200  # less visible text than this is "little"
BORDERLINE_TEXT_CHARS: Final = 2000  # more than this and the page stands on its own
SCRIPT_HEAVY_RATIO: Final = 10.0  # script weight per character of visible text


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the HTTP body says about the need to render: render it, sample it, or not."""

    verdict: Verdict
    reason: str
    text_chars: int
    script_chars: int


def script_weight(body: bytes) -> int:
    """Characters of executable script in a page, external scripts counted at a flat weight."""
    weight = 0
    for attrs, code in _SCRIPT.findall(body):
        if _JSON_TYPE.search(attrs):
            continue  # data islands (JSON-LD, __NEXT_DATA__ ...) are not code
        weight += EXTERNAL_SCRIPT_WEIGHT if _SRC_ATTR.search(attrs) else len(code.strip())
    return weight


def assess(body: bytes, text: str) -> Assessment:
    """Decide from the HTTP body and the text extracted from it whether to render.

    ``render``: the page on its own says JavaScript builds it (empty SPA root with little
    text, script-heavy with little text, <noscript> asking for JavaScript). ``sample``: it
    might (more script than text): render it if the domain is still being learned.
    ``http``: the HTTP result stands.
    """
    text_chars = len(text)
    scripts = script_weight(body)
    # An empty mount point only matters if the page has little else to show.
    thin = text_chars < THIN_TEXT_CHARS or scripts > text_chars
    if text_chars < BORDERLINE_TEXT_CHARS and thin and _SPA_ROOT.search(body):
        return Assessment("render", "spa_root", text_chars, scripts)
    if text_chars < THIN_TEXT_CHARS:
        for inner in _NOSCRIPT.findall(body):
            if _NEEDS_JS.search(inner):
                return Assessment("render", "noscript", text_chars, scripts)
    if text_chars < BORDERLINE_TEXT_CHARS and scripts >= SCRIPT_HEAVY_RATIO * max(
        text_chars, THIN_TEXT_CHARS // 2
    ):
        return Assessment("render", "script_heavy", text_chars, scripts)
    if text_chars < BORDERLINE_TEXT_CHARS and scripts > text_chars:
        return Assessment("sample", "borderline", text_chars, scripts)
    return Assessment("http", "static", text_chars, scripts)


def rendering_helped(http_chars: int, rendered_chars: int) -> bool:
    """A sample counts for rendering when it shows much more text than HTTP did."""
    return rendered_chars >= 1.5 * http_chars + 100


def domain_of(url: str) -> str:
    """The unit of learning: the host, with the port when it is not the default one."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


# --------------------------------------------------------------------------------------
# Learned per-domain decisions (JetStream KV)


class DecisionStore(Protocol):
    async def get(self, domain: str) -> RenderDecision | None: ...

    async def put(self, decision: RenderDecision) -> None: ...


def _kv_key(domain: str) -> str:
    # KV keys allow [-/_=.a-zA-Z0-9]; the domain itself is kept in the value.
    return re.sub(r"[^-_.a-zA-Z0-9]", "_", domain) or "_"


async def render_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The decisions bucket, created on first use (idempotent; a race with another
    worker creating it with the same config is harmless)."""
    try:
        return await js.key_value(settings.render_bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=settings.render_bucket,
            history=1,
            # Sites change: a decision expires and the domain is learned again.
            ttl=DECISION_TTL_S,
            description="fleet: learned per-domain render decisions",
        )


async def learned_domains(js: JetStreamContext, settings: Settings) -> list[RenderDecision]:
    """Every decision in the bucket (for `fleet status`); empty when there is no bucket."""
    try:
        kv = await js.key_value(settings.render_bucket)
    except BucketNotFoundError:
        return []
    out: list[RenderDecision] = []
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError on an empty bucket
        return []
    for key in keys:
        try:
            entry = await kv.get(key)
            out.append(render_decision_decoder.decode(entry.value or b""))
        except (KeyNotFoundError, KeyDeletedError):
            continue  # deleted (or expired) since the listing
        except Exception as exc:
            log.warning("skipping render decision %s: %s", key, exc)
    return sorted(out, key=lambda d: d.domain)


class KvDecisionStore:
    """Decisions in the JetStream KV bucket, cached locally for ``ttl_s``.

    A short TTL instead of a watch: decisions change rarely, a miss costs one KV get,
    and a worker that starts later still reads what others learned before it.
    """

    def __init__(self, kv: KeyValue, *, ttl_s: float = 10.0) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, RenderDecision | None]] = {}

    async def get(self, domain: str) -> RenderDecision | None:
        now = time.monotonic()
        cached = self._cache.get(domain)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        decision: RenderDecision | None = None
        try:
            entry = await self._kv.get(_kv_key(domain))
            if entry.value:
                decision = render_decision_decoder.decode(entry.value)
        except (KeyNotFoundError, KeyDeletedError):  # deleted: relearn the domain
            decision = None
        except Exception as exc:  # KV trouble: decide per page until it is back
            log.warning("render decision for %s unavailable: %s", domain, exc)
            return cached[1] if cached is not None else None
        self._cache[domain] = (now, decision)
        return decision

    async def put(self, decision: RenderDecision) -> None:
        await self._kv.put(_kv_key(decision.domain), render_decision_encoder.encode(decision))
        self._cache[decision.domain] = (time.monotonic(), decision)


class MemoryDecisionStore:
    """In-process store: unit tests, and workers told not to share (never in production)."""

    def __init__(self) -> None:
        self.decisions: dict[str, RenderDecision] = {}

    async def get(self, domain: str) -> RenderDecision | None:
        return self.decisions.get(domain)

    async def put(self, decision: RenderDecision) -> None:
        self.decisions[decision.domain] = decision


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one page: render it or not, and why."""

    render: bool
    reason: str
    sample: bool = False  # a learning sample: record rendered vs HTTP text length


class RenderPlanning(Protocol):
    """What the worker needs from the auto-mode policy (``RenderPolicy``)."""

    async def plan(self, url: str, assessment: Assessment) -> Plan: ...

    async def record(self, url: str, http_chars: int, rendered_chars: int) -> None: ...


@dataclass
class _Samples:
    helped: int = 0
    total: int = 0
    http_chars: int = 0
    rendered_chars: int = 0


class RenderPolicy:
    """Auto mode: combine the page's own signals with what is known about its domain."""

    def __init__(self, store: DecisionStore, *, samples_needed: int = 3) -> None:
        self._store = store
        self._needed = samples_needed
        self._samples: dict[str, _Samples] = {}

    async def plan(self, url: str, assessment: Assessment) -> Plan:
        domain = domain_of(url)
        decision = await self._store.get(domain)
        if decision is not None and decision.needs_render:
            return Plan(True, "domain_learned")
        if assessment.verdict == "render":
            return Plan(True, assessment.reason)
        if assessment.verdict == "sample":
            if decision is not None:
                return Plan(False, "domain_static")
            return Plan(True, "sample", sample=True)
        return Plan(False, assessment.reason)

    async def record(self, url: str, http_chars: int, rendered_chars: int) -> None:
        """Count one sample; with enough of them, decide for the domain and share it."""
        domain = domain_of(url)
        s = self._samples.setdefault(domain, _Samples())
        s.total += 1
        s.helped += rendering_helped(http_chars, rendered_chars)
        s.http_chars += http_chars
        s.rendered_chars += rendered_chars
        if s.total < self._needed:
            return
        decision = RenderDecision(
            domain=domain,
            needs_render=s.helped * 2 > s.total,
            samples=s.total,
            http_chars=s.http_chars // s.total,
            rendered_chars=s.rendered_chars // s.total,
            decided_at=time.time(),
        )
        del self._samples[domain]
        try:
            await self._store.put(decision)
        except Exception as exc:  # not fatal: another sample round will try again
            log.warning("could not store the render decision for %s: %s", domain, exc)
            return
        log.info(
            "learned %s: %s (%d samples, text %d -> %d chars)",
            domain,
            "render" if decision.needs_render else "http",
            decision.samples,
            decision.http_chars,
            decision.rendered_chars,
        )


# --------------------------------------------------------------------------------------
# Guarded subresource fetching


@dataclass(frozen=True, slots=True)
class Resource:
    status: int
    headers: dict[str, str]
    body: bytes


_MAX_AGE: Final = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*(\d+)", re.IGNORECASE)
_UNCACHEABLE: Final = re.compile(r"no-store|no-cache|private", re.IGNORECASE)


class ResourceCache:
    """A small shared cache of the subresources pages ask for (bundles, styles, images).

    Routing every request through our code turns off Chromium's HTTP cache, so without
    this every page would fetch the site's bundle again. Only what the site marks as
    shareable is kept (200, ``Cache-Control: max-age`` > 0, not private/no-store/no-cache,
    no cookie, no Vary other than Accept-Encoding), for at most its max-age and an hour,
    in an LRU of ``max_bytes``.
    """

    def __init__(
        self,
        *,
        max_bytes: int = 32 * 1024 * 1024,
        max_entry_bytes: int = 2 * 1024 * 1024,
        max_ttl_s: float = 3600.0,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, Resource]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entry = max_entry_bytes
        self._max_ttl_s = max_ttl_s
        self.hits = 0

    def get(self, url: str) -> Resource | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        expires, resource = entry
        if time.monotonic() >= expires:
            self._drop(url)
            return None
        self._entries.move_to_end(url)
        self.hits += 1
        return resource

    def put(self, url: str, resource: Resource) -> None:
        ttl = self._ttl(resource)
        if ttl <= 0 or len(resource.body) > self._max_entry:
            return
        self._drop(url)
        self._entries[url] = (time.monotonic() + ttl, resource)
        self._bytes += len(resource.body)
        while self._bytes > self._max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, url: str) -> None:
        entry = self._entries.pop(url, None)
        if entry is not None:
            self._bytes -= len(entry[1].body)

    def _ttl(self, resource: Resource) -> float:
        headers = resource.headers
        control = headers.get("cache-control", "")
        vary = headers.get("vary", "").replace(" ", "").lower()
        if (
            resource.status != 200
            or _UNCACHEABLE.search(control)
            or vary not in ("", "accept-encoding")
        ):
            return 0.0
        match = _MAX_AGE.search(control)
        return min(float(match.group(1)), self._max_ttl_s) if match else 0.0


class ResourceFetching(Protocol):
    async def fetch_resource(self, url: str, headers: dict[str, str]) -> Resource: ...


class ResourceFetcher:
    """Fetch what a page asks for (scripts, XHR, styles...) under the worker's SSRF rules.

    Same guard as ``fleet.fetch.Fetcher`` (``check_url`` on every hop, ``GuardedResolver``
    for every resolved address, redirects followed by us, the body capped), but any content
    type is accepted and HTTP errors are handed to the page as they are.
    """

    def __init__(self, settings: Settings, cache: ResourceCache | None = None) -> None:
        self._settings = settings
        self._policy = HostPolicy(settings.allow_hosts)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self.cache = cache if cache is not None else ResourceCache()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            s = self._settings
            self._resolver = GuardedResolver(self._policy)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=self._resolver,
                    limit=max(16, 8 * s.render_concurrency),
                    ttl_dns_cache=60,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=s.fetch_timeout_s, sock_connect=s.connect_timeout_s
                ),
                headers={"User-Agent": s.user_agent},
                auto_decompress=True,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await resolver.close()

    async def fetch_resource(self, url: str, headers: dict[str, str]) -> Resource:
        cached = self.cache.get(url)
        if cached is not None:
            return cached
        resource = await self._fetch(url, headers)
        self.cache.put(url, resource)
        return resource

    async def _fetch(self, url: str, headers: dict[str, str]) -> Resource:
        session = self._ensure_session()
        current = url
        limit = self._settings.max_body_bytes
        try:
            async with asyncio.timeout(self._settings.fetch_timeout_s):
                for _ in range(self._settings.max_redirects + 1):
                    target = check_url(current, self._policy)
                    async with session.get(target, allow_redirects=False, headers=headers) as r:
                        location = r.headers.get("Location")
                        if r.status in REDIRECT_STATUSES and location:
                            current = str(target.join(URL(location.strip())))
                            continue
                        chunks: list[bytes] = []
                        size = 0
                        while chunk := await r.content.readany():
                            size += len(chunk)
                            if size > limit:
                                raise FleetError(f"{url}: body over {limit} bytes")
                            chunks.append(chunk)
                        kept = {
                            k.lower(): v
                            for k, v in r.headers.items()
                            if k.lower() not in DROPPED_RESPONSE_HEADERS
                        }
                        return Resource(r.status, kept, b"".join(chunks))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise FleetError(f"{url}: {exc!r}") from exc
        raise FleetError(f"{url}: more than {self._settings.max_redirects} redirects")


# --------------------------------------------------------------------------------------
# The browser pool


def chromium_executable(settings: Settings) -> str | None:
    """FLEET_CHROMIUM_PATH, else Debian's Chromium if present, else None (Playwright's)."""
    if settings.chromium_path:
        return settings.chromium_path
    return DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).exists() else None


RENDER_FIX: Final = (
    "install the browser extra (pip install 'fleet[browser]'), use the fleet-browser image, "
    "set FLEET_CHROMIUM_PATH to a Chromium binary, or set FLEET_RENDER=never"
)


@dataclass(frozen=True, slots=True)
class Rendered:
    html: str
    final_url: str
    elapsed_ms: float


class Rendering(Protocol):
    async def render(self, url: str, document: FetchResult) -> Rendered: ...


class RenderTelemetry(Protocol):
    def browser_restarted(self, cause: str) -> None: ...

    def context_recycled(self) -> None: ...


@dataclass(eq=False)
class _Context:
    context: BrowserContext
    used: int = 0  # pages started in it, against render_context_pages
    open_pages: int = 0
    idle: list[Page] = field(default_factory=list)  # pages kept open for reuse
    uses: dict[Page, int] = field(default_factory=dict)  # renders per open page
    retired: bool = False


@dataclass(eq=False)
class _Session:
    """One launched browser and its contexts."""

    browser: Browser
    process: Any  # psutil.Process of the browser's main process, or None
    generation: int
    current: _Context | None = None
    contexts: set[_Context] = field(default_factory=set)
    open_pages: int = 0
    dead: bool = False  # crashed or hung: every page of it fails
    retired: bool = False  # no new pages; closed when the open ones finish
    closing: asyncio.Task[None] | None = None
    context_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def pid(self) -> int | None:
        return int(self.process.pid) if self.process is not None else None


def process_tree_memory(pid: int, limit: int | None = None) -> int:
    """Memory of a process and all its descendants (Chromium's renderers, GPU, utility).

    PSS where the kernel offers it: Chromium's processes share most of their pages, and a
    plain sum of RSS counts those once per process (about twice the real figure). PSS costs
    a walk of every mapping, RSS is one read: with ``limit``, PSS is only computed when the
    RSS sum (never below PSS) is over it.
    """
    import psutil  # noqa: PLC0415 - a dependency of the browser extra only

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += int(proc.memory_info().rss)
    if limit is not None and rss <= limit:
        return rss
    pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            pss += int(getattr(info, "pss", info.rss))  # no PSS on this platform: RSS
    return pss


def _is_browser_main(cmdline: list[str]) -> bool:
    return any("--remote-debugging-pipe" in a for a in cmdline) and not any(
        a.startswith("--type=") for a in cmdline
    )


def _new_browser_process(before: set[int]) -> Any:
    """The Chromium main process below this process that was not there ``before``."""
    import psutil  # noqa: PLC0415

    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.pid not in before and _is_browser_main(proc.cmdline()):
                return proc
    return None


def _browser_mains() -> set[int]:
    import psutil  # noqa: PLC0415

    pids: set[int] = set()
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if _is_browser_main(proc.cmdline()):
                    pids.add(proc.pid)
    return pids


def _kill_tree(process: Any) -> None:
    """SIGKILL a browser and its children and wait for them (psutil checks the process is
    still the one we launched, so a reused PID is never hit)."""
    import psutil  # noqa: PLC0415

    try:
        procs = [*process.children(recursive=True), process]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=3)


SETTLE_JS: Final = """
(quietMs) => new Promise((resolve) => {
  let timer = setTimeout(done, quietMs);
  const observer = new MutationObserver(() => {
    clearTimeout(timer);
    timer = setTimeout(done, quietMs);
  });
  observer.observe(document, {subtree: true, childList: true, characterData: true});
  function done() { observer.disconnect(); resolve(true); }
})
"""


class BrowserPool:
    """One Chromium per worker process; pages bounded by ``render_concurrency`` and reused.

    Use as ``async with BrowserPool(settings, resources) as pool``; ``start`` raises
    RenderUnavailable (with the fix) when Playwright or Chromium is missing.
    """

    def __init__(
        self,
        settings: Settings,
        resources: ResourceFetching,
        *,
        telemetry: RenderTelemetry | None = None,
        memory_check_interval_s: float = MEMORY_CHECK_INTERVAL_S,
    ) -> None:
        self._settings = settings
        self._resources = resources
        self._telemetry = telemetry
        self._memory_check_interval_s = memory_check_interval_s
        self._pages = asyncio.Semaphore(settings.render_concurrency)
        self._launch_lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._session: _Session | None = None
        self._sessions: set[_Session] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._generation = 0
        self._last_memory_check = 0.0
        # Per page being rendered: its document (served from our fetch) and the number of
        # its requests in flight (settling waits for zero).
        self._documents: dict[Page, FetchResult] = {}
        self._inflight: dict[Page, int] = {}
        self._closed = False
        self._unusable: RenderUnavailable | None = None
        # Counters, read by tests and `bench.render`.
        self.restarts: dict[str, int] = {}
        self.recycles = 0
        self.rendered = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def browser_pid(self) -> int | None:
        return self._session.pid if self._session is not None else None

    async def start(self, *, launch: bool = True) -> None:
        """Import Playwright, find Chromium and (``launch``) start it now, so a broken
        setup fails at start. Without ``launch`` (auto mode: most pages never need it) the
        browser starts with the first page that does; if it cannot, rendering is off
        for good (``RenderUnavailable`` from then on, one warning)."""
        try:
            from playwright.async_api import async_playwright  # noqa: PLC0415
        except ImportError:
            raise RenderUnavailable(
                f"rendering needs Playwright, which is not installed: {RENDER_FIX}"
            ) from None
        executable = chromium_executable(self._settings)
        if executable is not None and not os.access(executable, os.X_OK):
            raise RenderUnavailable(f"no Chromium at {executable}: {RENDER_FIX}")
        try:
            self._playwright = await async_playwright().start()
        except Exception as exc:  # e.g. the driver's node binary cannot load its libraries
            raise RenderUnavailable(
                f"cannot start Playwright's driver ({_first_line(exc)}): {RENDER_FIX}"
            ) from None
        if not launch:
            return
        try:
            await self._ensure_session()
        except Exception as exc:
            await self.close()
            raise RenderUnavailable(
                f"cannot launch Chromium ({_first_line(exc)}): {RENDER_FIX}"
            ) from None

    async def close(self) -> None:
        """Close every browser; what does not exit is killed and reaped."""
        self._closed = True
        for session in list(self._sessions):
            self._schedule_close(session)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=10)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._playwright.stop()
            self._playwright = None

    async def _launch(self) -> _Session:
        assert self._playwright is not None
        before = await asyncio.to_thread(_browser_mains)
        browser = await self._playwright.chromium.launch(
            executable_path=chromium_executable(self._settings),
            headless=True,
            args=list(CHROMIUM_ARGS),
            handle_sigterm=False,  # the worker drains on SIGTERM, then closes the pool
            handle_sigint=False,
            handle_sighup=False,
        )
        process = await asyncio.to_thread(_new_browser_process, before)
        self._generation += 1
        session = _Session(browser, process, self._generation)
        browser.on("disconnected", lambda _: self._on_disconnected(session))
        self._sessions.add(session)
        log.info("browser started (pid %s, generation %d)", session.pid, session.generation)
        return session

    def _on_disconnected(self, session: _Session) -> None:
        if session.dead or session.retired or self._closed:
            return
        session.dead = True
        self._restart(session, "crash")

    def _restart(self, session: _Session, cause: str) -> None:
        """Stop giving the session new pages; the next page launches a fresh browser."""
        log.warning("restarting the browser (pid %s): %s", session.pid, cause)
        self.restarts[cause] = self.restarts.get(cause, 0) + 1
        if self._telemetry is not None:
            self._telemetry.browser_restarted(cause)
        session.retired = True
        if self._session is session:
            self._session = None
        if session.dead or session.open_pages == 0:
            self._schedule_close(session)

    def _schedule_close(self, session: _Session) -> None:
        if session.closing is None:
            session.closing = asyncio.create_task(self._close_session(session))
            self._closing.add(session.closing)
            session.closing.add_done_callback(self._closing.discard)

    async def _close_session(self, session: _Session) -> None:
        self._sessions.discard(session)
        if not session.dead:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await session.browser.close()
        if session.process is not None:
            # Chromium exits on its own after close; a crashed or hung one may not.
            await asyncio.to_thread(_kill_tree, session.process)

    async def _ensure_session(self) -> _Session:
        session = self._session
        if session is not None and not session.retired:
            return session
        async with self._launch_lock:
            if self._session is None or self._session.retired:
                self._session = await self._launch()
            return self._session

    async def _current_context(self, session: _Session) -> _Context:
        # Locked: pages arriving together must share one new context, not open one each.
        async with session.context_lock:
            ctx = session.current
            if ctx is None or ctx.retired:
                context = await session.browser.new_context(
                    java_script_enabled=True,
                    service_workers="block",  # a service worker's fetches would skip our route
                    user_agent=self._settings.user_agent,
                )
                await context.route("**/*", self._route)
                ctx = _Context(context)
                session.contexts.add(ctx)
                session.current = ctx
            return ctx

    async def _take_page(self, session: _Session) -> tuple[_Context, Page]:
        ctx = await self._current_context(session)
        ctx.used += 1
        if ctx.used >= self._settings.render_context_pages:
            # Budget reached: no new pages here; closed once its pages are done.
            ctx.retired = True
            session.current = None
        ctx.open_pages += 1
        try:
            page = ctx.idle.pop() if ctx.idle else await ctx.context.new_page()
        except Exception:
            ctx.open_pages -= 1
            raise
        return ctx, page

    async def _give_back(self, session: _Session, ctx: _Context, page: Page, ok: bool) -> None:
        ctx.open_pages -= 1
        uses = ctx.uses.get(page, 0) + 1
        if ok and not ctx.retired and not session.retired and uses < PAGE_REUSE_LIMIT:
            ctx.idle.append(page)  # reused by the next render in this context
            ctx.uses[page] = uses
        elif not session.dead:
            ctx.uses.pop(page, None)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await page.close()
        if ctx.retired and ctx.open_pages == 0 and ctx in session.contexts:
            session.contexts.discard(ctx)
            if ctx.used >= self._settings.render_context_pages:
                self.recycles += 1
                if self._telemetry is not None:
                    self._telemetry.context_recycled()
            if not session.dead:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await ctx.context.close()

    async def render(self, url: str, document: FetchResult) -> Rendered:
        """Render an already fetched document (our fetch, our checks) in a browser page."""
        async with self._pages:
            if self._closed:
                raise RenderFailed(f"browser pool closed before rendering {url}")
            if self._unusable is not None:
                raise self._unusable
            try:
                session = await self._ensure_session()
            except Exception as exc:
                if self._generation == 0:
                    # Never launched: a broken setup, not a passing failure.
                    self._unusable = RenderUnavailable(
                        f"cannot launch Chromium ({_first_line(exc)}): {RENDER_FIX}"
                    )
                    log.warning("%s; pages that need rendering get the HTTP result", self._unusable)
                    raise self._unusable from None
                raise RenderFailed(
                    f"cannot start the browser to render {url}: {_first_line(exc)}",
                    reason="browser_start",
                ) from exc
            session.open_pages += 1
            started = time.perf_counter()
            ok = False
            try:
                try:
                    ctx, page = await self._take_page(session)
                except Exception as exc:
                    raise self._failure(session, url, exc) from exc
                try:
                    html, final_url = await self._render_page(session, page, document)
                    ok = True
                finally:
                    await self._give_back(session, ctx, page, ok)
            finally:
                session.open_pages -= 1
                if session.retired and session.open_pages == 0:
                    self._schedule_close(session)
            self.rendered += 1
            await self._check_memory(session)
            return Rendered(html, final_url, (time.perf_counter() - started) * 1000)

    async def _render_page(
        self, session: _Session, page: Page, document: FetchResult
    ) -> tuple[str, str]:
        url = document.final_url
        self._documents[page] = document
        self._inflight[page] = 0
        try:
            async with asyncio.timeout(self._settings.render_timeout_s):
                await page.goto(url, wait_until="load")
                await self._settle(page)
                return await page.content(), page.url
        except TimeoutError:
            if session.dead:
                raise BrowserCrashed(f"browser died while rendering {url}") from None
            if not await self._responsive(session):
                session.dead = True
                self._restart(session, "hang")
                raise BrowserCrashed(f"browser hung while rendering {url}") from None
            raise RenderTimeout(
                f"render of {url} took over {self._settings.render_timeout_s:g}s"
            ) from None
        except Exception as exc:
            raise self._failure(session, url, exc) from exc
        finally:
            self._documents.pop(page, None)
            self._inflight.pop(page, None)

    def _failure(self, session: _Session, url: str, exc: BaseException) -> FleetError:
        if session.dead or not session.browser.is_connected():
            return BrowserCrashed(f"browser died while rendering {url}: {_first_line(exc)}")
        return RenderFailed(f"render of {url} failed: {_first_line(exc)}")

    async def _settle(self, page: Page) -> None:
        """Wait until the DOM is quiet and no request is in flight, at most settle_max_s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.render_settle_max_s):
                while True:
                    await page.evaluate(SETTLE_JS, DOM_QUIET_MS)
                    if self._inflight.get(page, 0) == 0:
                        return
                    await asyncio.sleep(0.05)

    async def _responsive(self, session: _Session) -> bool:
        """After a timeout: is the browser itself still answering?"""
        try:
            async with asyncio.timeout(HANG_PROBE_TIMEOUT_S):
                cdp = await session.browser.new_browser_cdp_session()
                await cdp.send("Browser.getVersion")
                await cdp.detach()
            return True
        except Exception:
            return False

    async def _check_memory(self, session: _Session) -> None:
        now = time.monotonic()
        if session.pid is None or session.retired:
            return
        if now - self._last_memory_check < self._memory_check_interval_s:
            return
        self._last_memory_check = now
        limit = self._settings.browser_max_rss_mb * 1024 * 1024
        used = await asyncio.to_thread(process_tree_memory, session.pid, limit)
        if used > limit:
            log.info(
                "browser memory %d MB over browser_max_rss_mb=%d",
                used // 2**20,
                self._settings.browser_max_rss_mb,
            )
            self._restart(session, "rss")

    async def _route(self, route: Route, request: Request) -> None:
        """Every request of every page: fulfilled by our guarded fetch, or aborted."""
        url = request.url
        page = _page_of(request)
        if (
            page is not None
            and page in self._documents
            and request.is_navigation_request()
            and request.frame.parent_frame is None
        ):
            # The page's first main-frame navigation is the document the worker fetched
            # (and checked) already; later ones (a script changing location) are fetched.
            document = self._documents.pop(page)
            await _quiet(route.fulfill(**_document_response(document)))
            return
        if not url.startswith(("http://", "https://")) or request.method not in ROUTED_METHODS:
            await _quiet(route.abort("blockedbyclient"))
            return
        if self._settings.render_block_media and request.resource_type in BLOCKABLE_RESOURCES:
            await _quiet(route.abort("blockedbyclient"))
            return
        counted = page is not None and page in self._inflight
        if counted:
            assert page is not None
            self._inflight[page] += 1
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
            try:
                res = await self._resources.fetch_resource(url, headers)
            except (BlockedAddress, InvalidUrl) as exc:
                log.debug("browser request refused: %s", exc)
                await _quiet(route.abort("blockedbyclient"))
                return
            except FleetError as exc:
                log.debug("browser request failed: %s", exc)
                await _quiet(route.abort("failed"))
                return
            await _quiet(route.fulfill(status=res.status, headers=res.headers, body=res.body))
        finally:
            if counted and page in self._inflight:
                assert page is not None
                self._inflight[page] -= 1


def _page_of(request: Request) -> Page | None:
    try:
        return request.frame.page
    except Exception:  # service-worker requests have no frame
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _quiet(action: Awaitable[None]) -> None:
    # The page may be gone already (closed, crashed): nothing left to answer.
    with contextlib.suppress(Exception):
        await action


def _document_response(document: FetchResult) -> dict[str, Any]:
    content_type = document.content_type
    if document.charset:
        content_type += f"; charset={document.charset}"
    return {
        "status": document.status,
        "headers": {"content-type": content_type},
        "body": document.body,
    }
