"""fleet's crawl vs Scrapy's CrawlSpider vs Crawlee, on the same site, in one run.

    python -m bench.crawl [--pages 2000] [--quick] [--workers N] [--json] [--skip TOOL]...

1. Generate the benchmark site (bench/site.py, 2,000 pages by default) and serve it on
   127.0.0.1 from its own process (nginx when installed, else aiohttp).
2. Crawl it from its root with each tool, one after the other, each discovering, fetching
   and extracting every page it reaches on the site's host:
   fleet ``fleet run --crawl ROOT --workers N`` (private nats-server, SQLite index),
   Scrapy ``CrawlSpider`` (bench/scrapy_crawl.py), Crawlee ``ParselCrawler`` with
   ``enqueue_links`` (bench/crawlee_crawl.py).
3. The frontier on its own: every link of every page (extracted by fleet) checked against a
   crawl's seen-set in a private nats-server, 32 pages at a time as a worker does, with the
   worker's seen cache and without it (every link a server round trip): links/s.

Pages/s is pages done over wall time (process start to exit); each tool's own crawl time is
shown too. Exit 1 if a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import (
    SiteServer,
    _tail,
    _version,
    log,
    machine_info,
    run_measured,
)
from bench.site import file_for_path, generate_site
from fleet.nats.frontier import Candidate, Frontier
from fleet.nats.server import EmbeddedNats
from fleet.nats.session import nats_session
from fleet.scrape.extract import extract
from fleet.scrape.scope import CrawlScope
from fleet.settings import Settings
from fleet.urls import url_id

DEFAULT_PAGES = 2000
QUICK_PAGES = 300
TARGET_LINKS_PER_S = 20_000.0
TOOLS = ("fleet", "scrapy", "crawlee")


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _result(name: str, run: Any, pages: int, crawl_s: Any, **details: Any) -> dict[str, Any]:
    ok = run.exit_code == 0 and pages > 0
    return {
        "name": name,
        "ok": ok,
        "pages": pages,
        "wall_s": round(run.wall_s, 2),
        "crawl_s": round(float(crawl_s), 2) if isinstance(crawl_s, int | float) else None,
        "pages_per_s": round(pages / run.wall_s, 1) if run.wall_s > 0 else 0.0,
        "cpu_s": round(run.tree.cpu_seconds, 1),
        "peak_rss_mib": round(run.tree.peak_rss_bytes / 2**20),
        "error": "" if ok else _tail(run.stderr_path, 15),
        **details,
    }


def run_fleet(root: str, server: SiteServer, workdir: Path, workers: int, timeout: float) -> Any:
    db = workdir / "crawl.db"
    env = {k: v for k, v in os.environ.items() if k != "FLEET_NATS_URL"}
    env["FLEET_ALLOW_HOSTS"] = f"127.0.0.1:{server.port}"
    command = [sys.executable, "-m", "fleet", "run", "--crawl", root, "--workers", str(workers)]
    command += ["--sink", f"sqlite:///{db}", "--json"]
    run = run_measured(command, env=env, workdir=workdir, name="fleet-crawl", timeout_s=timeout)
    summary: dict[str, Any] = {}
    with contextlib.suppress(ValueError, OSError):
        summary = json.loads(run.stdout_path.read_text().strip().splitlines()[-1])
    return _result(
        "fleet",
        run,
        int(summary.get("indexed", 0)),
        summary.get("seconds"),
        version=_version("fleet"),
        workers=workers,
        discovered=summary.get("discovered"),
        skipped=summary.get("skipped"),
        dead_lettered=summary.get("dead_lettered"),
    )


def run_other(name: str, module: str, root: str, workdir: Path, timeout: float) -> Any:
    items, stats_file = workdir / f"{name}-items.jl", workdir / f"{name}-stats.json"
    command = [sys.executable, "-m", module, "--root", root, "--out", str(items)]
    command += ["--stats", str(stats_file), "--concurrency", "32"]
    run = run_measured(command, env=dict(os.environ), workdir=workdir, name=name, timeout_s=timeout)
    stats: dict[str, Any] = {}
    with contextlib.suppress(ValueError, OSError):
        stats = json.loads(stats_file.read_text())
    return _result(
        name,
        run,
        _lines(items),
        stats.get("elapsed_time_seconds"),
        version=_version(name),
        concurrency=32,
    )


async def frontier_rate(root: Path, base: str, paths: list[str]) -> dict[str, Any]:
    """Links/s through the frontier: the site's real links, 32 pages at a time."""
    scope = CrawlScope.build([base + "/"], "prefix")
    pages: list[list[Candidate]] = []
    for path in paths:
        body = (root / file_for_path(path)).read_bytes()
        ex = extract(
            body, final_url=base + path, content_type="text/html", charset="utf-8", max_links=1000
        )
        pages.append([Candidate(u, url_id(u), 1, scope.verdict(u)) for u in ex.links])
    links = sum(len(p) for p in pages)
    out: dict[str, Any] = {"pages": len(pages), "links": links}
    with tempfile.TemporaryDirectory() as store:
        server = EmbeddedNats(store_dir=store).start()
        try:
            for label, cache in (("cached", 200_000), ("uncached", 1)):
                settings = Settings(nats_url=server.url, crawl_seen_cache=cache)
                async with nats_session(settings, name="bench-frontier") as session:
                    frontier = Frontier(session.nc, session.js, settings)
                    crawl = f"b{label}"
                    queue: asyncio.Queue[tuple[int, list[Candidate]]] = asyncio.Queue()
                    for item in enumerate(pages):
                        queue.put_nowait(item)

                    async def page_loop(
                        f: Frontier = frontier, c: str = crawl, q: Any = queue
                    ) -> None:
                        while not q.empty():
                            i, cands = q.get_nowait()
                            mine = await f.claim(c, f"p{i}", cands)
                            f.remember(c, [x.uid for x, m in zip(cands, mine, strict=True) if m])

                    started = time.perf_counter()
                    await asyncio.gather(*(page_loop() for _ in range(32)))
                    seconds = time.perf_counter() - started
                    out[label] = {
                        "seconds": round(seconds, 2),
                        "links_per_s": round(links / seconds),
                        "server_checks": frontier.checks,
                        "server_checks_per_s": round(frontier.checks / seconds),
                    }
                    await frontier.close()
        finally:
            server.close()
    return out


def render(report: dict[str, Any]) -> str:
    m, site = report["machine"], report["site"]
    lines = [
        "",
        f"crawl benchmark: {site['pages']} pages from the root, served by {report['server']}",
        f"machine: {m['usable_cpus']} CPUs ({m['cpu_model']}), load {m['loadavg_at_start']}",
        "",
        f"{'tool':10} {'pages':>6} {'wall s':>8} {'pages/s':>8} {'crawl s':>8} {'CPU s':>7} "
        f"{'peak RSS':>9}",
    ]
    for r in report["runs"]:
        crawl_s = "-" if r["crawl_s"] is None else f"{r['crawl_s']:.1f}"
        lines.append(
            f"{r['name']:10} {r['pages']:>6} {r['wall_s']:>8.1f} {r['pages_per_s']:>8.1f} "
            f"{crawl_s:>8} {r['cpu_s']:>7.1f} {r['peak_rss_mib']:>6} MiB"
            + ("" if r["ok"] else "  FAILED")
        )
    fr = report.get("frontier")
    if fr:
        c, u = fr["cached"], fr["uncached"]
        status = "PASS" if c["links_per_s"] >= TARGET_LINKS_PER_S else "MISS"
        lines += [
            "",
            f"frontier: {fr['links']} links of {fr['pages']} pages checked, 32 pages at a time",
            f"  with the worker's seen cache: {c['links_per_s']:,} links/s "
            f"({c['server_checks']} server checks)  [{status} >= {TARGET_LINKS_PER_S:,.0f}]",
            f"  every link to the server:     {u['links_per_s']:,} links/s "
            f"({u['server_checks_per_s']:,} server checks/s)",
        ]
    for r in report["runs"]:
        if not r["ok"]:
            lines += ["", f"{r['name']} failed:", r["error"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pages", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--server", choices=("auto", "nginx", "aiohttp"), default="auto")
    parser.add_argument("--skip", action="append", choices=(*TOOLS, "frontier"), default=[])
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pages = args.pages or (QUICK_PAGES if args.quick else DEFAULT_PAGES)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-crawl-") as tmp:
        workdir = Path(tmp)
        log(f"generating {pages} pages")
        site = generate_site(workdir / "site", pages)
        report: dict[str, Any] = {
            "machine": machine_info(),
            "site": {"pages": site.pages, "total_bytes": site.total_bytes},
            "runs": [],
        }
        with SiteServer(site.root, workdir, args.server) as server:
            report["server"] = server.kind
            root = f"http://127.0.0.1:{server.port}/"
            for tool in TOOLS:
                if tool in args.skip:
                    continue
                log(f"{tool}: crawling {root}")
                if tool == "fleet":
                    result = run_fleet(root, server, workdir, args.workers, args.timeout)
                else:
                    module = "bench.scrapy_crawl" if tool == "scrapy" else "bench.crawlee_crawl"
                    result = run_other(tool, module, root, workdir, args.timeout)
                log(f"{tool}: {result['pages']} pages, {result['pages_per_s']} pages/s")
                report["runs"].append(result)
                time.sleep(2)
        if "frontier" not in args.skip:
            log("frontier: checking every link of the site")
            base = "http://127.0.0.1:8000"
            report["frontier"] = asyncio.run(frontier_rate(site.root, base, site.paths))
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else render(report))
    return 0 if all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
