"""Browser rendering: when a page needs JavaScript, the pool of Chromium pages that runs it.

Three parts, one role:

* ``assess`` — a pure heuristic over the HTTP body and its extracted text: does this page
  look like JavaScript builds its content (empty SPA root, little text against a lot of
  script, a <noscript> asking for JavaScript)?
* ``RenderPolicy`` + ``KvDecisionStore`` — per-domain learning: borderline pages of an
  unknown domain are rendered as samples; once enough samples agree, the decision is put
  into a JetStream key-value bucket that every worker reads, so the fleet learns once.
* ``BrowserPool`` — one Chromium per worker process, a bounded number of open pages
  (one per browser context), contexts recycled after a page budget, the browser
  restarted when it crashes, hangs or grows past its memory cap. The browser's only way
  out is the worker's guarded forward proxy (``fleet.proxy.GuardedProxy``: every host
  checked like the worker's own fetches): nothing bypasses it and the browser resolves no
  names itself (``FENCE_ARGS``), so a page cannot use it to reach private addresses. No
  request is intercepted: interception costs a round trip through Playwright per request
  and turns Chromium's HTTP cache off.

Playwright is an optional extra: it is imported only when a pool is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self
from urllib.parse import urlsplit

import psutil
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError

from fleet.errors import (
    BrowserCrashed,
    FleetError,
    RenderFailed,
    RenderTimeout,
    RenderUnavailable,
)
from fleet.fetch import FetchResult
from fleet.messages import RenderDecision, render_decision_decoder, render_decision_encoder
from fleet.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from nats.js.kv import KeyValue
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Playwright,
    )

log = logging.getLogger(__name__)

# Debian's Chromium, in order of preference (see chromium_executable). The headless shell's
# binary itself: its /usr/bin wrapper is a shell that runs it as a child, not exec'd.
DEBIAN_CHROMIUMS: Final = ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium")
# Playwright's default --disable-features (playwright-core chromiumSwitches.ts, 1.65).
PLAYWRIGHT_DISABLED_FEATURES: Final = (
    *("AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose"),
    *("HttpsUpgrades", "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter"),
    *("PaintHolding", "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect"),
    *("TcpPortRandomizationWin", "OptimizationHints", "NetworkTimeServiceQuerying"),
    *("AimEnabled", "PreconnectToSearch", "msForceBrowserSignIn"),
    "msEdgeUpdateLaunchServicesPreferredVersion",
)
FLEET_DISABLED_FEATURES: Final = (
    # A reused page would otherwise keep the previous documents alive for "back".
    "BackForwardCache",
    # Headless Chromium still builds the address bar's popups, two renderer processes per
    # browser context that nobody sees (~75 MB, and two process starts per context).
    "WebUIOmniboxPopup",
    "WebUIOmniboxAimPopup",
)
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
    # One switch for all: Chromium keeps only the last --disable-features, so this list
    # carries Playwright's own (tests/test_render_pool.py checks it still does).
    "--disable-features=" + ",".join((*PLAYWRIGHT_DISABLED_FEATURES, *FLEET_DISABLED_FEATURES)),
)
# The SSRF fence (with ``--proxy-server`` at the guarded proxy, see fleet.proxy): nothing
# bypasses the proxy, loopback included, and every host name resolves to "not found", so
# a connection the proxy does not make for the browser cannot happen. Only the proxy's own
# literal address is left to the browser's resolver (tested).
FENCE_ARGS: Final = (
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
MEMORY_CHECK_INTERVAL_S: Final = 10.0
DECISION_TTL_S: Final = 7 * 24 * 3600.0
HANG_PROBE_TIMEOUT_S: Final = 5.0
DOM_QUIET_MS: Final = 100
# A reused page's renderer grows ~2 MB per render without a plateau: V8 garbage nobody
# collects (no memory pressure). Collected every GC_EVERY renders, off the render path, it
# stays flat (measured: +16 MB over 240 renders on 4 pages instead of +400 MB), so a page is
# reused up to PAGE_REUSE_LIMIT renders (a context's budget usually comes first).
GC_EVERY: Final = 10
PAGE_REUSE_LIMIT: Final = 100

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
# The browser pool


def chromium_executable(settings: Settings) -> str | None:
    """FLEET_CHROMIUM_PATH, else Debian's headless shell, else Debian's Chromium, else None
    (Playwright's own download).

    The headless shell (package chromium-headless-shell; what Playwright itself launches
    for headless) is Chromium without the browser's UI. The full browser makes each
    context a window with its own compositor and address-bar popups: with a context per
    page it renders ~25 % slower (measured, docs/benchmarks.md)."""
    if settings.chromium_path:
        return settings.chromium_path
    return next((path for path in DEBIAN_CHROMIUMS if Path(path).exists()), None)


RENDER_FIX: Final = (
    "install the browser extra (pip install 'fleet[browser]'), use the fleet-browser image, "
    "set FLEET_CHROMIUM_PATH to a Chromium binary, or set FLEET_RENDER=never"
)


@dataclass(frozen=True, slots=True)
class Rendered:
    html: str
    final_url: str
    elapsed_ms: float


class BrowserProxy(Protocol):
    """Where the browser's connections go: ``fleet.proxy.GuardedProxy``, started."""

    @property
    def url(self) -> str: ...

    def serving(self, document: FetchResult) -> contextlib.AbstractContextManager[None]: ...


class Rendering(Protocol):
    async def render(self, url: str, document: FetchResult) -> Rendered: ...


class RenderTelemetry(Protocol):
    def browser_restarted(self, cause: str) -> None: ...

    def context_recycled(self) -> None: ...


@dataclass(eq=False)
class _Tab:
    """A browser context with one page: one render at a time, the page reused.

    One page per context staggers the recycling: the tabs' budgets run out one at a time,
    so one renderer process is replaced at a time instead of all of a shared context's at
    once (measured: a memory saw-tooth of ±15 % and a burst of process start-ups)."""

    context: BrowserContext
    page: Page
    budget: int  # renders before the context is closed (see BrowserPool._staggered)
    gc_phase: int  # offsets the page's collections (see BrowserPool._staggered)
    used: int = 0  # renders started in the context
    page_uses: int = 0  # renders started on the current page

    @property
    def spent(self) -> bool:
        return self.used >= self.budget


@dataclass(eq=False)
class _Session:
    """One launched browser and its tabs."""

    browser: Browser
    process: psutil.Process | None  # the browser's main process
    generation: int
    tabs: set[_Tab] = field(default_factory=set)  # open, not closing
    idle: list[_Tab] = field(default_factory=list)  # ready for a render
    # Tabs that count against render_concurrency + 1: opening, idle, rendering or being
    # collected, but not one on its last render (its successor opens beside it).
    slots: int = 0
    opening: bool = False  # a spare tab is being opened in the background
    opened: int = 0  # tabs opened so far (the first ones get staggered budgets)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # a tab went idle or closed
    open_pages: int = 0  # renders in progress
    dead: bool = False  # crashed or hung: every page of it fails
    retired: bool = False  # no new pages; closed when the open ones finish
    closing: asyncio.Task[None] | None = None

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


def _new_browser_process(before: set[int]) -> psutil.Process | None:
    """The Chromium main process below this process that was not there ``before``: the
    innermost one, should FLEET_CHROMIUM_PATH be a wrapper script that does not exec."""
    found = [proc for pid, proc in _children(_is_browser_main).items() if pid not in before]
    parents: set[int] = set()
    for proc in found:
        with contextlib.suppress(psutil.Error):
            parents.add(proc.ppid())
    return next((proc for proc in found if proc.pid not in parents), None)


def _is_playwright_driver(cmdline: list[str]) -> bool:
    return "run-driver" in cmdline


def _children(match: Callable[[list[str]], bool]) -> dict[int, psutil.Process]:
    """Processes below this one whose command line ``match`` accepts, by PID."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if match(proc.cmdline()):
                    found[proc.pid] = proc
    return found


def _gone(process: psutil.Process) -> bool:
    """Exited (a zombie not yet reaped counts) or replaced by another under its PID."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _kill_tree(process: psutil.Process) -> None:
    """SIGKILL a browser and its children and wait for them (psutil checks the process is
    still the one we launched, so a reused PID is never hit)."""
    try:
        procs = [*process.children(recursive=True), process]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=3)


# Settling: the DOM quiet for ``quietMs`` while none of the page's fetch()/XHR calls or
# script loads is pending (counted in the page by NET_TRACKER_JS; a page without the
# tracker, as in the benchmark's bare loop, waits for the DOM alone). Counted in the page,
# not through Playwright's request events: those cost three messages per request between
# Chromium, the driver and Python, about 2 ms of the worker's CPU per page (measured).
SETTLE_JS: Final = """
(quietMs) => new Promise((resolve) => {
  const pending = () => window.__fleetPending || 0;
  let timer = setTimeout(done, quietMs);
  const observer = new MutationObserver(() => {
    clearTimeout(timer);
    timer = setTimeout(done, quietMs);
  });
  observer.observe(document, {subtree: true, childList: true, characterData: true});
  function done() {
    if (pending() > 0) { timer = setTimeout(done, quietMs); return; }
    observer.disconnect();
    resolve(true);
  }
})
"""

# Runs in every document before its own scripts: counts fetch()/XHR calls and external
# script loads in flight, what a page's text still waits for after the load event. Images,
# styles and WebSockets are not counted: text does not wait for them.
NET_TRACKER_JS: Final = r"""
(() => {
  if (Object.prototype.hasOwnProperty.call(window, '__fleetPending')) return;
  let pending = 0;
  const done = () => { pending = Math.max(0, pending - 1); };
  Object.defineProperty(window, '__fleetPending', {get: () => pending});
  const fetch0 = window.fetch;
  if (typeof fetch0 === 'function') {
    window.fetch = function fetch(...args) {
      pending++;
      let result;
      try { result = fetch0.apply(this, args); } catch (e) { done(); throw e; }
      Promise.resolve(result).then(done, done);
      return result;
    };
  }
  const XHR = window.XMLHttpRequest;
  if (XHR) {
    const send0 = XHR.prototype.send;
    XHR.prototype.send = function send(...args) {
      pending++;
      this.addEventListener('loadend', done, {once: true});
      try { return send0.apply(this, args); } catch (e) { done(); throw e; }
    };
  }
  const JS = /^(|module|(text|application)\/(x-)?(java|ecma)script)$/i;
  // Only scripts added after the load event: earlier ones hold the load event back
  // (goto waits for it), and a listener added to those could come after their own load.
  const track = (node) => {
    if (document.readyState !== 'complete') return;
    if (node.nodeName !== 'SCRIPT' || !node.src || node.noModule) return;
    if (!JS.test((node.type || '').trim())) return;
    pending++;
    let once = false;
    const end = () => { if (!once) { once = true; done(); } };
    node.addEventListener('load', end);
    node.addEventListener('error', end);
  };
  new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) track(node);
  }).observe(document, {subtree: true, childList: true});
})();
"""


class BrowserPool:
    """One Chromium per worker process; pages bounded by ``render_concurrency`` and reused.

    Use as ``async with BrowserPool(settings, proxy) as pool``; ``start`` raises
    RenderUnavailable (with the fix) when Playwright or Chromium is missing. Every
    connection of the browser goes through ``proxy`` (the SSRF fence, ``fleet.proxy``).

    Renders run in tabs: a browser context with one page, reused render after render and
    closed after its budget (render_context_pages). The first render_concurrency tabs of a
    browser get staggered budgets (1/c, 2/c, … of it), so from then on one tab at a time is
    replaced: one renderer process starting instead of a context's worth, and the memory
    flat instead of a saw-tooth. Nothing of a tab's lifecycle waits on the render path: a
    page's V8 garbage is collected every GC_EVERY renders while it is out of the idle list
    (instead of replacing the page, which costs a renderer process); one spare tab is kept
    open ahead (at most render_concurrency + 1 tabs, a render waits for the spare rather
    than opening more); a tab on its last render gives up its place, so its successor opens
    beside it; spent tabs close in the background.
    """

    def __init__(
        self,
        settings: Settings,
        proxy: BrowserProxy,
        *,
        telemetry: RenderTelemetry | None = None,
        memory_check_interval_s: float = MEMORY_CHECK_INTERVAL_S,
    ) -> None:
        self._settings = settings
        self._proxy = proxy
        self._telemetry = telemetry
        self._memory_check_interval_s = memory_check_interval_s
        self._pages = asyncio.Semaphore(settings.render_concurrency)
        self._launch_lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._driver: psutil.Process | None = None  # Playwright's driver process
        self._session: _Session | None = None
        self._sessions: set[_Session] = set()
        self._closing: set[asyncio.Task[None]] = set()
        # Off the render path: spare pages being opened, retired pages and contexts closing.
        self._background: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._last_memory_check = 0.0
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
            import playwright.async_api  # noqa: F401, PLC0415
        except ImportError:
            raise RenderUnavailable(
                f"rendering needs Playwright, which is not installed: {RENDER_FIX}"
            ) from None
        executable = chromium_executable(self._settings)
        if executable is not None and not os.access(executable, os.X_OK):
            raise RenderUnavailable(f"no Chromium at {executable}: {RENDER_FIX}")
        try:
            await self._start_driver()
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
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
        for session in list(self._sessions):
            self._schedule_close(session)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=10)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._playwright.stop()
            self._playwright = None

    async def _start_driver(self) -> None:
        """Start Playwright (its driver: a node process that talks to the browsers)."""
        from playwright.async_api import async_playwright  # noqa: PLC0415

        before = await asyncio.to_thread(_children, _is_playwright_driver)
        self._playwright = await async_playwright().start()
        found = await asyncio.to_thread(_children, _is_playwright_driver)
        self._driver = next((proc for proc in found.values() if proc.pid not in before), None)

    def _driver_lost(self) -> bool:
        """Whether Playwright's driver died (killed, out of memory); if so, so did every
        browser it drove, for the pool's purposes: they are marked dead and restarted."""
        if self._driver is None:
            return False
        if not _gone(self._driver):
            return False
        for session in list(self._sessions):
            if not session.dead:
                session.dead = True
                self._restart(session, "driver")
        return True

    async def _restart_driver(self) -> None:
        old, self._playwright = self._playwright, None
        pid, self._driver = (self._driver.pid if self._driver else None), None
        log.warning("Playwright's driver (pid %s) is gone: starting a new one", pid)
        if old is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await old.stop()
        await self._start_driver()

    async def _launch(self) -> _Session:
        assert self._playwright is not None
        before = set(await asyncio.to_thread(_children, _is_browser_main))
        browser = await self._playwright.chromium.launch(
            executable_path=chromium_executable(self._settings),
            headless=True,
            args=[*self._launch_args()],
            handle_sigterm=False,  # the worker drains on SIGTERM, then closes the pool
            handle_sigint=False,
            handle_sighup=False,
        )
        process = await asyncio.to_thread(_new_browser_process, before)
        self._generation += 1
        session = _Session(browser, process, self._generation)
        browser.on("disconnected", lambda _: self._on_disconnected(session))
        self._sessions.add(session)
        log.info(
            "browser started (pid %s, generation %d, %s)",
            session.pid,
            session.generation,
            chromium_executable(self._settings) or "Playwright's Chromium",
        )
        return session

    def _launch_args(self) -> list[str]:
        args = [*CHROMIUM_ARGS, *FENCE_ARGS, f"--proxy-server={self._proxy.url}"]
        if self._settings.render_block_media:
            # Images are never requested (no proxy can tell an image from a script inside
            # an HTTPS tunnel, so the browser is told not to load them).
            args.append("--blink-settings=imagesEnabled=false")
        return args

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
        session.ready.set()  # renders waiting for a tab look again (a dead browser has none)
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
            if self._driver_lost():
                await self._restart_driver()
            if self._session is None or self._session.retired:
                self._session = await self._launch()
            return self._session

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        # Failures are seen where they matter (a next context that fails is opened again
        # on the render path); never "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def _staggered(self, session: _Session) -> tuple[int, int]:
        """A new tab's budget and collection phase. Tabs opened together render at the same
        pace: left alone they would run out together and collect their garbage together
        (a memory saw-tooth as wide as all of them). So a browser's first
        render_concurrency tabs get 1/c, 2/c, … of render_context_pages, and every tab's
        collections are offset by its place: from then on they run out, and collect, one
        at a time."""
        budget, lanes = self._settings.render_context_pages, self._settings.render_concurrency
        k, session.opened = session.opened, session.opened + 1
        if k < lanes:
            budget = max(1, budget * (k + 1) // lanes)
        return budget, k * GC_EVERY // lanes % GC_EVERY

    async def _open_tab(self, session: _Session) -> _Tab:
        session.slots += 1
        try:
            context = await session.browser.new_context(
                java_script_enabled=True,
                # A service worker would outlive the page and answer from its own cache.
                service_workers="block",
                user_agent=self._settings.user_agent,
            )
            try:
                await context.add_init_script(NET_TRACKER_JS)
                page = await context.new_page()
            except Exception:
                self._spawn(self._close_quietly(context.close()))
                raise
        except Exception:
            session.slots -= 1
            session.ready.set()  # a render waiting for this tab opens its own
            raise
        tab = _Tab(context, page, *self._staggered(session))
        session.tabs.add(tab)
        return tab

    async def _take_tab(self, session: _Session) -> _Tab:
        # At render_concurrency + 1 tabs (a spare opening or a tab being collected), wait
        # for one of them rather than opening yet another.
        while (
            not session.idle
            and not session.dead
            and session.slots > self._settings.render_concurrency
        ):
            session.ready.clear()
            async with asyncio.timeout(self._settings.render_timeout_s):
                await session.ready.wait()
        tab = session.idle.pop() if session.idle else await self._open_tab(session)
        tab.used += 1
        tab.page_uses += 1
        if tab.spent:
            session.slots -= 1  # its last render: the next tab opens beside it, now
        self._keep_spare(session, successor=tab.spent)
        return tab

    def _keep_spare(self, session: _Session, *, successor: bool = False) -> None:
        """Keep one idle tab ready, opened off the render path (at most
        render_concurrency + 1 tabs, plus those on their last render). A ``successor``
        opens even beside an idle spare: the tab it replaces is on its last render, and the
        renderer count stays put instead of dipping until the spare is used up."""
        if (
            (successor or not session.idle)
            and not session.opening
            and not session.retired
            and not session.dead
            and session.slots <= self._settings.render_concurrency
        ):
            session.opening = True
            self._spawn(self._open_spare(session))

    async def _open_spare(self, session: _Session) -> None:
        session.opening = True
        try:
            tab = await self._open_tab(session)
        except Exception:
            return
        finally:
            session.opening = False
        self._idle(session, tab)

    def _idle(self, session: _Session, tab: _Tab) -> None:
        if session.retired or session.dead:
            self._close_tab(session, tab)
        else:
            session.idle.append(tab)
        session.ready.set()

    def _close_tab(self, session: _Session, tab: _Tab) -> None:
        """Close a tab's context in the background (not when its browser is dead: closing
        the browser takes everything)."""
        if tab not in session.tabs:
            return
        session.tabs.discard(tab)
        if not tab.spent:
            session.slots -= 1  # a spent tab gave its slot up at its last render
        if not session.dead:
            self._spawn(self._close_quietly(tab.context.close()))

    async def _refresh(self, session: _Session, tab: _Tab) -> None:
        """Collect the page's V8 garbage (its renderer's growth) or, at PAGE_REUSE_LIMIT,
        replace the page in the same context; then the tab is idle again."""
        try:
            async with asyncio.timeout(5):
                if tab.page_uses >= PAGE_REUSE_LIMIT:
                    old, tab.page = tab.page, await tab.context.new_page()
                    tab.page_uses = 0
                    self._spawn(self._close_quietly(old.close()))
                else:
                    cdp = await tab.context.new_cdp_session(tab.page)
                    await cdp.send("HeapProfiler.collectGarbage")
                    await cdp.detach()
        except Exception:
            self._close_tab(session, tab)
            session.ready.set()
            self._keep_spare(session)
            return
        self._idle(session, tab)

    @staticmethod
    async def _close_quietly(closing: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await closing

    @staticmethod
    def _needs_refresh(tab: _Tab) -> bool:
        """Every GC_EVERY renders of a page its garbage is collected: a full GC, ~5 ms of
        CPU per page rendered at GC_EVERY 10 (measured), so not for a page that closes
        within GC_EVERY more renders anyway (its tab's budget)."""
        if tab.page_uses >= PAGE_REUSE_LIMIT:
            return tab.budget - tab.used > GC_EVERY  # else its context closes soon enough
        due = (tab.page_uses + tab.gc_phase) % GC_EVERY == 0
        return due and tab.budget - tab.used > GC_EVERY

    def _give_back(self, session: _Session, tab: _Tab, ok: bool) -> None:
        """Return a tab after a render; nothing here waits on the browser."""
        if ok and not tab.spent and not session.retired and not session.dead:
            if self._needs_refresh(tab):
                self._spawn(self._refresh(session, tab))  # idle again after that
            else:
                session.idle.append(tab)  # the next render reuses it
        else:
            # Spent, or its page failed (whatever state it is in goes with the context).
            if tab.spent and not session.dead:
                self.recycles += 1
                if self._telemetry is not None:
                    self._telemetry.context_recycled()
            self._close_tab(session, tab)
            self._keep_spare(session)
        session.ready.set()

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
                    tab = await self._take_tab(session)
                except Exception as exc:
                    raise self._failure(session, url, exc) from exc
                try:
                    html, final_url = await self._render_page(session, tab.page, document)
                    ok = True
                finally:
                    self._give_back(session, tab, ok)
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
        # The proxy answers the browser's request for the document with the worker's copy
        # (plain HTTP; over HTTPS the browser fetches it again, through the proxy).
        url = document.final_url
        try:
            with self._proxy.serving(document):
                async with asyncio.timeout(self._settings.render_timeout_s):
                    await page.goto(url, wait_until="load")
                    await self._settle(page)
                    html = await page.content()
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
        if self._died(session):
            # Its requests failed with it, so the page may have settled half-built.
            raise BrowserCrashed(f"browser died while rendering {url}")
        return html, page.url

    def _died(self, session: _Session) -> bool:
        """Whether the browser is gone, noticed before Playwright's disconnect event: the
        replies it sent just before dying are still delivered after it (seen: a page whose
        API call failed as the browser was killed, settled and returned without its text)."""
        if self._driver_lost() or session.dead or not session.browser.is_connected():
            return True
        if session.process is None or not _gone(session.process):
            return False
        session.dead = True
        self._restart(session, "crash")
        return True

    def _failure(self, session: _Session, url: str, exc: BaseException) -> FleetError:
        if self._driver_lost() or session.dead or not session.browser.is_connected():
            return BrowserCrashed(f"browser died while rendering {url}: {_first_line(exc)}")
        return RenderFailed(f"render of {url} failed: {_first_line(exc)}")

    async def _settle(self, page: Page) -> None:
        """Wait until the DOM is quiet and no fetch/XHR/script is pending, at most
        settle_max_s (then the page is taken as it is)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.render_settle_max_s):
                await page.evaluate(SETTLE_JS, DOM_QUIET_MS)

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
