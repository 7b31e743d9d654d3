"""Rendering throughput and memory: ``python -m bench.render`` (``make bench-render``).

1. Serve a generated JavaScript site on 127.0.0.1 from its own process: every page is an
   SPA shell whose script (one shared bundle) builds ~300 words of text and three images.
2. Baseline: a bare Playwright loop in this process renders --baseline-pages of those pages
   (same Chromium, same launch flags minus fleet's fence (proxy, DNS rules), same
   concurrency, pages reused, same settle condition: the load event, then DOM_QUIET_MS
   (50 ms) without DOM mutation).
3. fleet: a private nats-server and ``fleet worker --render always`` (render_concurrency =
   the same concurrency) render --pages pages; done when the results stream holds them all.
   The worker's process tree (Python, the Playwright driver, Chromium and its children) is
   sampled every 0.5 s: RSS summed over the tree, and every 1 s PSS (shared pages counted
   once: the tree's own resident memory).
4. Crawlee: its PlaywrightCrawler (``bench.crawlee_render``, a process of its own) renders
   --crawlee-pages of the same pages with the same Chromium and concurrency.
5. Block-media: the pool in this process renders --media-pages pages with
   render_block_media off, then on.
6. Static corpus (``bench.render_static``): ``fleet run`` with FLEET_RENDER=never and auto
   alternated on real documentation pages served by nginx: what auto costs a static site.

Prints a table (or --json). Targets (PASS/MISS, informational): fleet ≥ 90 % of the bare
loop's pages/s and ≥ 3x Crawlee's; worker memory (PSS of its process tree) flat within
±10 % after warm-up (the first 25 % of pages); auto ≥ 90 % of never on the static corpus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import nats
import psutil
from aiohttp import web
from playwright.async_api import Route, async_playwright

from bench import render_static
from bench.run import free_port, log, machine_info
from fleet.nats.server import EmbeddedNats
from fleet.scrape.fetch import Fetcher
from fleet.scrape.proxy import GuardedProxy
from fleet.scrape.render.chromium import CHROMIUM_ARGS, chromium_executable
from fleet.scrape.render.pool import BrowserPool
from fleet.scrape.render.settle import DOM_QUIET_MS, SETTLE_JS, TIMER_MAX_MS
from fleet.settings import Settings

DEFAULT_PAGES = 4000
DEFAULT_BASELINE_PAGES = 400
DEFAULT_MEDIA_PAGES = 200
QUICK_PAGES = 300
DEFAULT_CONCURRENCY = 4
TARGET_RATIO = 0.9
TARGET_CRAWLEE = 3.0
STATIC_COPIES = 3  # the corpus listed 3 times: 1,590 URLs
TARGET_FLAT = 0.10
WARMUP_SHARE = 0.25
SAMPLE_S = 0.5
PSS_EVERY = 2  # samples: PSS costs ~20 ms of CPU per sample (the kernel walks every mapping)
TRACE_POINTS = 20
MIB = 1024 * 1024

WORDS = [
    *("river", "stone", "lantern", "copper", "meadow", "signal", "harbor", "quiet"),
    *("orbit", "velvet", "canyon", "ember", "glacier", "tunnel", "marble", "prism"),
    *("falcon", "thimble", "saddle", "beacon", "willow", "cobalt", "pepper"),
]

APP_JS_TEMPLATE = """
(function () {
  const n = window.ITEM;
  const words = %s;
  let seed = n * 2654435761 %% 4294967296;
  function next() { seed = (seed * 1664525 + 1013904223) %% 4294967296; return seed; }
  const root = document.getElementById('root');
  const h1 = document.createElement('h1');
  h1.textContent = 'Item ' + n;
  root.append(h1);
  for (let p = 0; p < 6; p++) {
    const para = document.createElement('p');
    const out = [];
    for (let i = 0; i < 50; i++) out.push(words[next() %% words.length]);
    para.textContent = (p === 0 ? 'item' + n + ' ' : '') + out.join(' ');
    root.append(para);
  }
  for (let i = 0; i < 3; i++) {
    const img = document.createElement('img');
    img.src = '/img/' + ((n + i) %% 20) + '.png';
    img.width = 64; img.height = 64;
    root.append(img);
  }
})();
"""
APP_JS = APP_JS_TEMPLATE.replace("%%", "%").replace("%s", json.dumps(WORDS))

PAGE = (
    '<!doctype html><html lang="en"><head><title>Item {n}</title>'
    '<link rel="stylesheet" href="/static/site.css"></head>'
    '<body><div id="root"></div><script>window.ITEM = {n};</script>'
    '<script src="/static/app.js"></script></body></html>'
)
# Static assets say they may be cached, as a real site's bundles and images do.
CACHEABLE = {"Cache-Control": "public, max-age=3600"}
CSS = "body { font-family: sans-serif; margin: 2em; } img { margin: 4px; }\n" * 20


def png(seed: int, size: int = 96) -> bytes:
    """A valid, poorly compressible RGB PNG (~27 KB): images that cost something to fetch."""
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + rng.randbytes(size * 3) for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- the site


def serve_site(port: int) -> None:
    """The site process: pages, the bundle, CSS and images from memory."""
    images = {f"/img/{i}.png": png(i) for i in range(20)}

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return web.Response(text=PAGE.format(n=n), content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "app.js":
            return web.Response(
                text=APP_JS, content_type="application/javascript", headers=CACHEABLE
            )
        if name == "site.css":
            return web.Response(text=CSS, content_type="text/css", headers=CACHEABLE)
        raise web.HTTPNotFound()

    async def image(request: web.Request) -> web.Response:
        body = images.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="image/png", headers=CACHEABLE)

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/img/{name}", image)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Site:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/p/{n}"

    def __enter__(self) -> Site:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.render", "--serve-site", str(self.port)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError("site server did not start")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


# --------------------------------------------------------------------------- baseline


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process): both runs
    keep the cores saturated, so their pages/s ratio is about the inverse of their CPU per
    page, and this shows where a gap comes from."""
    t = psutil.cpu_times()
    # Linux counts guest time inside user time already; idle and iowait are not busy.
    not_busy = ("idle", "iowait", "guest", "guest_nice")
    return float(sum(getattr(t, f) for f in t._fields if f not in not_busy))


async def bare_playwright(
    urls: list[str], concurrency: int, chromium: str | None, *, intercept: bool = False
) -> tuple[float, float]:
    """(pages/s, machine CPU ms per page) of a plain Playwright loop: no NATS, nothing but
    rendering.

    ``intercept``: every request goes through ``context.route`` and is let through
    unchanged (``route.continue_()``): the cost of interception alone (which also turns
    Chromium's HTTP cache off), kept for comparison with the interception-based fence
    fleet used before its guarded proxy."""
    args = list(CHROMIUM_ARGS)  # fleet's minus the fence (proxy, DNS rules)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    chars = 0
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=args)
        context = await browser.new_context()
        if intercept:

            async def through(route: Route) -> None:
                await route.continue_()

            await context.route("**/*", through)

        async def loop() -> None:
            nonlocal chars
            page = await context.new_page()
            while not queue.empty():
                url = queue.get_nowait()
                await page.goto(url, wait_until="load")
                await page.evaluate(SETTLE_JS, [DOM_QUIET_MS, TIMER_MAX_MS])
                chars += len(await page.content())

        # Warm-up page outside the clock (browser start, first bundle fetch).
        warm = await context.new_page()
        await warm.goto(urls[0], wait_until="load")
        await warm.close()
        started, busy = time.perf_counter(), machine_busy_s()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed, busy = time.perf_counter() - started, machine_busy_s() - busy
        await browser.close()
    assert chars > 0
    return len(urls) / elapsed, busy * 1000 / len(urls)


# --------------------------------------------------------------------------- fleet


def tree_memory(pid: int, pss: bool = True) -> tuple[int, int, int]:
    """(RSS summed, PSS summed or 0, process count) of a process and its descendants.

    PSS walks every mapping of every process: sampled less often, it would otherwise
    cost the measured run a noticeable share of a core."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    rss = pss_sum = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if pss:
                info = proc.memory_full_info()
                rss += info.rss
                pss_sum += getattr(info, "pss", info.rss)
            else:
                rss += proc.memory_info().rss
    return rss, pss_sum, len(procs)


PROCESS_KINDS = ("renderers", "browser", "chromium other", "driver", "python")


def _kind(cmdline: list[str]) -> str:
    if "run-driver" in cmdline:
        return "driver"
    if any(a.startswith("--type=renderer") for a in cmdline):
        return "renderers"
    if any(a.startswith("--type=") for a in cmdline):
        return "chromium other"  # GPU, network service, storage
    if any("--remote-debugging-pipe" in a for a in cmdline):
        return "browser"
    return "python"


class TreeCpu:
    """CPU seconds of a process tree by kind of process (``PROCESS_KINDS``): each process's
    last seen CPU time minus what it had at ``start`` (0 for those born after), so the
    processes that exit between two samples lose at most a sample's worth."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._base: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}

    def _read(self) -> dict[int, tuple[str, float]]:
        seen: dict[int, tuple[str, float]] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self._pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    seen[proc.pid] = (_kind(proc.cmdline()), t.user + t.system)
        return seen

    def start(self) -> None:
        self._base = {pid: t for pid, (_, t) in self._read().items()}
        self._last = {}

    def sample(self) -> None:
        self._last.update(self._read())

    def ms_per_page(self, pages: int) -> dict[str, float]:
        out = dict.fromkeys(PROCESS_KINDS, 0.0)
        for pid, (kind, t) in self._last.items():
            out[kind] += (t - self._base.get(pid, 0.0)) * 1000 / max(1, pages)
        return out


async def run_fleet_worker(
    site: Site, pages: int, concurrency: int, workdir: Path, extra_env: dict[str, str]
) -> dict[str, Any]:
    server = EmbeddedNats(store_dir=str(workdir / "js")).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings(
            nats_url=server.url,
            allow_hosts=(f"127.0.0.1:{site.port}",),
            render="always",
            render_concurrency=concurrency,
            worker_concurrency=concurrency * 2,
            stream_prefix="BENCH",
            subject_prefix="bench",
            # One loopback host, ours: no per-host limits.
            host_concurrency=0,
            host_delay_s=0.0,
        )
        env = {**os.environ, **settings.to_env(), **extra_env}
        log_file = (workdir / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "fleet", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=log_file,
        )
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        # Wait for the worker's browser to be up: start-up is not throughput.
        deadline = time.monotonic() + 60
        while tree_memory(worker.pid, pss=False)[2] < 4:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"worker did not start; see {workdir / 'worker.log'}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        urls = workdir / "urls.txt"
        urls.write_text("".join(site.url(n) + "\n" for n in range(pages)))
        cpu = TreeCpu(worker.pid)
        cpu.start()
        started, busy = time.perf_counter(), machine_busy_s()
        subprocess.run(
            [sys.executable, "-m", "fleet", "publish", str(urls)],
            env=env,
            check=True,
            capture_output=True,
        )
        samples: list[tuple[int, int, int]] = []  # (pages done, rss, pss)
        done = 0
        while done < pages:
            await asyncio.sleep(SAMPLE_S)
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited; see {workdir / 'worker.log'}")
            try:
                done = (await js.stream_info(settings.results_stream)).state.messages
            except Exception:
                done = 0
            with_pss = len(samples) % PSS_EVERY == 0
            rss, pss, _ = tree_memory(worker.pid, pss=with_pss)
            cpu.sample()
            if done < pages:  # the last sample sees the pool closing contexts
                samples.append((done, rss, pss))
            if time.perf_counter() - started > 1800:
                raise RuntimeError("fleet run timed out")
        elapsed, busy = time.perf_counter() - started, machine_busy_s() - busy
        await nc.close()
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(60)
        server.close()
    after = [s for s in samples if s[0] >= WARMUP_SHARE * pages]
    return {
        "pages": pages,
        "seconds": elapsed,
        "pages_per_s": pages / elapsed,
        "cpu_ms_per_page": busy * 1000 / pages,
        "process_cpu_ms_per_page": cpu.ms_per_page(pages),
        "memory": {
            "rss": _spread([s[1] for s in after]),
            "pss": _spread([s[2] for s in after if s[2]]),
            "samples": len(after),
            "trace": _thin([(s[0], s[1] // MIB, s[2] // MIB) for s in samples if s[2]]),
            "all_samples": [(s[0], s[1] // MIB, s[2] // MIB) for s in samples],  # --json only
        },
    }


def _thin(points: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    step = max(1, len(points) // TRACE_POINTS)
    return points[::step]


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    mean = statistics.fmean(values)
    third = max(1, len(values) // 3)
    first, last = statistics.fmean(values[:third]), statistics.fmean(values[-third:])
    return {
        "mean_mb": mean / MIB,
        "min_mb": min(values) / MIB,
        "max_mb": max(values) / MIB,
        "max_dev": max(abs(v - mean) for v in values) / mean,
        # Growth from the first third of the run (after warm-up) to the last third.
        "drift": (last - first) / first,
    }


# --------------------------------------------------------------------------- Crawlee


def run_crawlee(
    site: Site, pages: int, concurrency: int, chromium: str | None, workdir: Path
) -> dict[str, Any]:
    """Crawlee's PlaywrightCrawler in its own process on the first ``pages`` pages."""
    urls, stats = workdir / "crawlee-urls.txt", workdir / "crawlee-stats.json"
    urls.write_text("".join(site.url(n) + "\n" for n in range(pages)))
    command = [sys.executable, "-m", "bench.crawlee_render", "--urls", str(urls)]
    command += ["--stats", str(stats), "--concurrency", str(concurrency)]
    if chromium:
        command += ["--chromium", chromium]
    busy = machine_busy_s()
    with (workdir / "crawlee.log").open("wb") as err:
        crawler = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=err)
        cpu = TreeCpu(crawler.pid)
        deadline = time.monotonic() + 3600
        while crawler.poll() is None and time.monotonic() < deadline:
            cpu.sample()
            time.sleep(SAMPLE_S / 2)
        if crawler.poll() is None:
            crawler.kill()
        if crawler.wait() != 0:
            raise RuntimeError(f"Crawlee failed; see {workdir / 'crawlee.log'}")
    busy = machine_busy_s() - busy
    result: dict[str, Any] = json.loads(stats.read_text())
    result["process_cpu_ms_per_page"] = cpu.ms_per_page(result["pages"])
    # Whole run, browser start included (Crawlee has no hook after it): an upper bound.
    result["cpu_ms_per_page"] = busy * 1000 / max(1, result["pages"])
    return result


# --------------------------------------------------------------------------- block-media


async def pool_rate(site: Site, pages: int, concurrency: int, block_media: bool) -> float:
    settings = Settings(
        allow_hosts=(f"127.0.0.1:{site.port}",),
        render_concurrency=concurrency,
        render_block_media=block_media,
    )
    async with (
        Fetcher(settings) as fetcher,
        Fetcher(settings) as browser_fetcher,
        GuardedProxy(settings, browser_fetcher) as proxy,
        BrowserPool(settings, proxy, environ=os.environ) as pool,
    ):
        sem = asyncio.Semaphore(concurrency * 2)

        async def one(n: int) -> None:
            async with sem:
                doc = await fetcher.fetch(site.url(n))
                await pool.render(doc.final_url, doc)

        await one(0)
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(pages)))
        return pages / (time.perf_counter() - started)


# --------------------------------------------------------------------------- report


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report_text(r: dict[str, Any]) -> str:
    f, mem = r["fleet"], r["fleet"]["memory"]
    routed = r["baseline"]["intercepted_pages_per_s"]
    lines = [
        f"machine: {r['machine'].get('cpus')} CPUs, {r['machine'].get('python')}, "
        f"{r['chromium']}, concurrency {r['concurrency']}",
        "",
        f"{'run':34} {'pages':>6} {'pages/s':>8} {'CPU ms/page':>12}",
        f"{'bare Playwright loop (mean of 2)':34} {r['baseline']['pages']:>6} "
        f"{r['baseline']['pages_per_s']:>8.2f} {r['baseline']['cpu_ms_per_page']:>12.1f}",
        f"{'bare loop + route.continue_()':34} {r['baseline']['pages']:>6} "
        f"{r['baseline']['intercepted_pages_per_s']:>8.2f}",
        f"{'fleet worker --render always':34} {f['pages']:>6} {f['pages_per_s']:>8.2f} "
        f"{f['cpu_ms_per_page']:>12.1f}",
        f"{'Crawlee PlaywrightCrawler':34} {r['crawlee']['pages']:>6} "
        f"{r['crawlee']['pages_per_s']:>8.2f} {r['crawlee']['cpu_ms_per_page']:>12.1f}",
        f"{'pool, block_media off':34} {r['media']['pages']:>6} {r['media']['off']:>8.2f}",
        f"{'pool, block_media on':34} {r['media']['pages']:>6} {r['media']['on']:>8.2f}",
        "",
        f"ratio fleet / bare loop: {r['ratio']:.0%}  (target ≥ {TARGET_RATIO:.0%}: "
        f"{_verdict(r['ratio'] >= TARGET_RATIO)})",
        f"machine CPU per page, fleet / bare loop: "
        f"{f['cpu_ms_per_page'] / r['baseline']['cpu_ms_per_page']:.2f}x "
        f"(all processes; both runs keep the {r['machine'].get('cpus')} cores busy)",
        f"interception alone: {routed / r['baseline']['pages_per_s']:.0%} of the bare loop; "
        f"fleet / intercepted loop: {f['pages_per_s'] / routed:.0%}",
        f"ratio fleet / Crawlee: {r['crawlee_ratio']:.2f}x  (target ≥ {TARGET_CRAWLEE:.0f}x: "
        f"{_verdict(r['crawlee_ratio'] >= TARGET_CRAWLEE)}; Crawlee's CPU/page includes its "
        "browser start)",
        f"block_media on / off: {r['media']['on'] / r['media']['off']:.2f}x",
        "",
        "CPU ms per page by process (its own CPU time, not the machine's; Crawlee's "
        "includes its start):",
        f"  {'':10} " + " ".join(f"{k:>14}" for k in (*PROCESS_KINDS, "total")),
    ]
    for name, run in (("fleet", f), ("Crawlee", r["crawlee"])):
        per = run["process_cpu_ms_per_page"]
        lines.append(
            f"  {name:10} "
            + " ".join(f"{per[k]:>14.1f}" for k in PROCESS_KINDS)
            + f" {sum(per.values()):>14.1f}"
        )
    lines += [
        "",
        f"worker tree memory after warm-up ({mem['samples']} samples, "
        f"{WARMUP_SHARE:.0%} of pages skipped):",
    ]
    # The target is on PSS: the sum of per-process RSS counts each of Chromium's shared
    # pages once per process mapping it (about twice the real figure) and jumps by a
    # renderer's shared mappings whenever one starts or exits, with no change in memory.
    pss, rss = mem["pss"], mem["rss"]
    lines += [
        "  PSS (the tree's resident memory, each page once):",
        f"    mean {pss['mean_mb']:.0f} MB, min {pss['min_mb']:.0f}, max {pss['max_mb']:.0f}, "
        f"max deviation from mean {pss['max_dev']:.1%} "
        f"(target ±{TARGET_FLAT:.0%}: {_verdict(pss['max_dev'] <= TARGET_FLAT)}), "
        f"drift first→last third {pss['drift']:+.1%}",
        "  RSS summed per process (informational: a shared page once per process mapping it):",
        f"    mean {rss['mean_mb']:.0f} MB, min {rss['min_mb']:.0f}, max {rss['max_mb']:.0f}, "
        f"max deviation from mean {rss['max_dev']:.1%}, drift first→last third "
        f"{rss['drift']:+.1%}",
    ]
    lines.append(
        "  trace (pages done, RSS MB, PSS MB): "
        + ", ".join(f"{d}:{a}/{b}" for d, a, b in mem["trace"])
    )
    for key in ("static", "static_generated"):
        if r.get(key):
            lines += ["", *render_static.report_lines(r[key])]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.split("\n")[0])
    p.add_argument("--pages", type=int, default=DEFAULT_PAGES, help="pages for the worker run")
    p.add_argument("--baseline-pages", type=int, default=DEFAULT_BASELINE_PAGES)
    p.add_argument("--media-pages", type=int, default=DEFAULT_MEDIA_PAGES)
    p.add_argument("--crawlee-pages", type=int, default=DEFAULT_BASELINE_PAGES)
    p.add_argument("--static-copies", type=int, default=STATIC_COPIES)
    p.add_argument("--static-rounds", type=int, default=2, help="never/auto pairs (0: none)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_PAGES} pages everywhere")
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve-site", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.pages = args.baseline_pages = args.media_pages = QUICK_PAGES
        args.crawlee_pages = QUICK_PAGES // 2
        args.static_rounds = 1
    return args


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    chromium = chromium_executable(Settings())
    version = "bundled"
    if chromium:
        out = subprocess.run([chromium, "--version"], capture_output=True, text=True, check=False)
        version = out.stdout.strip()
    with Site() as site:
        log(f"site on 127.0.0.1:{site.port}")
        base_urls = [site.url(n) for n in range(args.baseline_pages)]
        # The bare loop runs before and after fleet: drift in the machine's speed (other
        # load, thermal) hits both sides; its mean is the baseline.
        log(f"bare Playwright loop: {args.baseline_pages} pages, concurrency {args.concurrency}")
        before, before_cpu = await bare_playwright(base_urls, args.concurrency, chromium)
        log(f"  {before:.2f} pages/s, {before_cpu:.1f} CPU ms/page")
        log(f"fleet worker --render always: {args.pages} pages")
        fleet = await run_fleet_worker(site, args.pages, args.concurrency, workdir, {})
        log(f"  {fleet['pages_per_s']:.2f} pages/s, {fleet['cpu_ms_per_page']:.1f} CPU ms/page")
        log("bare Playwright loop again")
        after, after_cpu = await bare_playwright(base_urls, args.concurrency, chromium)
        log(f"  {after:.2f} pages/s, {after_cpu:.1f} CPU ms/page")
        base = (before + after) / 2
        log("bare Playwright loop with pass-through interception")
        routed, _ = await bare_playwright(base_urls, args.concurrency, chromium, intercept=True)
        log(f"  {routed:.2f} pages/s")
        log(f"Crawlee PlaywrightCrawler: {args.crawlee_pages} pages")
        crawlee = run_crawlee(site, args.crawlee_pages, args.concurrency, chromium, workdir)
        log(f"  {crawlee['pages_per_s']:.2f} pages/s")
        log(f"block_media off/on: {args.media_pages} pages each")
        off = await pool_rate(site, args.media_pages, args.concurrency, block_media=False)
        on = await pool_rate(site, args.media_pages, args.concurrency, block_media=True)
        log(f"  off {off:.2f}, on {on:.2f} pages/s")
    static = generated = None
    if args.static_rounds > 0:
        static = render_static.compare(workdir / "static", args.static_copies, args.static_rounds)
        generated = render_static.compare(
            workdir / "generated", 0, args.static_rounds, corpus="generated"
        )
    return {
        "machine": machine_info(),
        "chromium": version,
        "concurrency": args.concurrency,
        "baseline": {
            "pages": args.baseline_pages,
            "pages_per_s": base,
            "runs": [before, after],
            "cpu_ms_per_page": (before_cpu + after_cpu) / 2,
            "intercepted_pages_per_s": routed,
        },
        "fleet": fleet,
        "ratio": fleet["pages_per_s"] / base,
        "media": {"pages": args.media_pages, "off": off, "on": on},
        "crawlee": crawlee,
        "crawlee_ratio": fleet["pages_per_s"] / crawlee["pages_per_s"],
        "static": static,
        "static_generated": generated,
    }


def main(argv: Sequence[str] | None = None, stdout: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if args.serve_site is not None:
        serve_site(args.serve_site)
        return 0
    with tempfile.TemporaryDirectory(prefix="fleet-bench-render-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    stdout.write(json.dumps(report, indent=2) + "\n" if args.json else report_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
