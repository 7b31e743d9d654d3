"""`fleet serve` search benchmark: ``python -m bench.serve`` / ``make bench-serve``.

1. A private nats-server and a SQLite index of ``--pages`` generated pages (written with the
   real sink, as the indexer does).
2. ``fleet serve`` as its own process (uvicorn, httptools), with NATS connected.
3. The load, from a separate process: ``wrk`` (Debian's, with a Lua script rotating the
   queries) when it is installed and ``--tool`` allows, else an aiohttp client loop with
   ``--connections`` keep-alive connections in its own process. Each request is
   ``GET /api/search?q=WORD&limit=10`` with a word drawn from the generated vocabulary, so
   every answer has hits and snippets.

Prints requests/s, p50/p90/p99 latency and errors; JSON with ``--json``. Exit status 1 when
the target (``--target-rps``, default 500, with p99 under ``--target-p99-ms``, 50) is
missed, so the bench can gate a change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from fleet.messages import Page
from fleet.nats.server import EmbeddedNats
from fleet.settings import Settings
from fleet.sinks.sqlite import SqliteSink
from fleet.urls import url_id

REPO = Path(__file__).resolve().parent.parent

# A Zipf-distributed vocabulary, as in real text: a few words are in almost every page, most
# in few. Queries are 1-3 words like real search queries (every word must match), drawn
# from ranks QUERY_RANKS: no stop words, no hapaxes. `--common` instead asks for single
# words of rank 100-3000 only (hundreds of matches each), the slow case of BM25 ranking on
# this index (detail=column: see docs/benchmarks.md).
_SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "xe", "yo", "zi"]
_ENDINGS = ["", *_SYLLABLES]
VOCABULARY = [
    a + b + c + d for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES for d in _ENDINGS
][:20_000]
QUERY_RANKS = range(100, 5000)
COMMON_RANKS = range(100, 3000)
WORDS_PER_PAGE = 300
ZIPF_S = 1.1


def query_words(pages: int, n: int = 500, seed: int = 3, *, common: bool = False) -> list[str]:
    """``n`` search queries ('+'-joined words, URL-safe) for the index of ``pages`` pages.

    Known-item queries: 1-3 words (of rank QUERY_RANKS) taken from one page, so every query
    has hits, as when a user looks for a page they know exists."""
    rng = random.Random(seed)
    if common:
        return [VOCABULARY[rng.choice(COMMON_RANKS)] for _ in range(n)]
    rank = {word: i for i, word in enumerate(VOCABULARY)}
    corpus = make_pages(min(pages, 500))
    queries: list[str] = []
    while len(queries) < n:
        page = rng.choice(corpus)
        words = sorted({w for w in page.text.split() if rank[w] in QUERY_RANKS})
        if words:
            k = min(len(words), rng.choice((1, 2, 2, 3)))
            queries.append("+".join(rng.sample(words, k)))
    return queries


def log(message: str) -> None:
    print(f"[bench-serve {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pages(n: int, seed: int = 7) -> list[Page]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(VOCABULARY))]
    pages = []
    for i in range(n):
        url = f"https://site{i % 20}.example/page/{i}"
        words = rng.choices(VOCABULARY, weights=weights, k=WORDS_PER_PAGE)
        pages.append(
            Page(
                id=url_id(url),
                url=url,
                final_url=url,
                canonical_url=url,
                status=200,
                content_type="text/html",
                title=" ".join(words[:6]).title(),
                description=" ".join(words[6:20]),
                headings=[" ".join(words[20:25])],
                text=" ".join(words),
                lang="en",
                fetched_at=1_700_000_000.0 + i,
            )
        )
    return pages


async def build_index(path: Path, n: int, fts_detail: str = "column") -> None:
    sink = SqliteSink(path, fts_detail=fts_detail)
    await sink.open()
    try:
        pages = make_pages(n)
        for start in range(0, len(pages), 500):
            await sink.upsert(pages[start : start + 500])
    finally:
        await sink.close()


@contextlib.contextmanager
def serve_process(settings: Settings, port: int) -> Iterator[tuple[str, psutil.Process]]:
    env = {
        **os.environ,
        **settings.to_env(),
        "FLEET_API_PORT": str(port),
        "FLEET_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "serve"], env=env, stdin=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("fleet serve exited during start-up") from None
                time.sleep(0.1)
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the aiohttp client (runs in its own process: python -m bench.serve --client ...)


async def client_loop(
    base: str, connections: int, duration_s: float, queries: list[str]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    rng = random.Random(1)
    deadline = time.perf_counter() + duration_s
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                word = rng.choice(queries)
                started = time.perf_counter()
                try:
                    async with session.get(f"{base}/api/search?q={word}&limit=10") as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "tool": f"aiohttp client, {connections} connections",
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
    }


def run_client(
    base: str, connections: int, duration_s: float, pages: int, common: bool
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serve",
            "--client",
            base,
            "--connections",
            str(connections),
            "--duration",
            str(duration_s),
            "--pages",
            str(pages),
            *(["--common"] if common else []),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- wrk


WRK_SCRIPT = """
local words = {%s}
local i = 0
request = function()
  i = i %% #words + 1
  return wrk.format("GET", "/api/search?q=" .. words[i] .. "&limit=10")
end
"""


def _ms(value: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", value)
    if not match:
        return float("nan")
    number, unit = float(match.group(1)), match.group(2)
    return round(number / 1000 if unit == "us" else number * 1000 if unit == "s" else number, 2)


def run_wrk(
    base: str, connections: int, duration_s: float, threads: int, queries: list[str]
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT % ", ".join(f'"{w}"' for w in queries))
        script = fh.name
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{int(duration_s)}s",
                "--latency",
                "-s",
                script,
                base,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.MULTILINE))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "tool": f"wrk -t{threads} -c{connections}",
        "requests": total,
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else None,
        "seconds": duration_s,
        "rps": rps,
        "p50_ms": _ms(percentiles.get("50", "nan")),
        "p90_ms": _ms(percentiles.get("90", "nan")),
        "p99_ms": _ms(percentiles.get("99", "nan")),
    }


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--target-rps", type=float, default=500.0)
    parser.add_argument("--target-p99-ms", type=float, default=50.0)
    parser.add_argument(
        "--common", action="store_true", help="single common words (hundreds of hits each)"
    )
    parser.add_argument(
        "--fts-detail", choices=["column", "full"], default="column", help="FTS5 detail"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: the load process
    args = parser.parse_args(argv)

    if args.client:
        queries = query_words(args.pages, common=args.common)
        load = client_loop(args.client, args.connections, args.duration, queries)
        print(json.dumps(asyncio.run(load)))
        return 0

    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "aiohttp"
    with tempfile.TemporaryDirectory(prefix="fleet-bench-serve-") as tmp:
        db = Path(tmp) / "fleet.db"
        log(f"indexing {args.pages} generated pages into {db}")
        asyncio.run(build_index(db, args.pages, args.fts_detail))
        server = EmbeddedNats(store_dir=str(Path(tmp) / "js")).start()
        try:
            settings = Settings(nats_url=server.url, sink=f"sqlite:///{db}")
            with serve_process(settings, free_port()) as (base, process):
                log(f"fleet serve on {base}; warming up")
                run_client(base, 4, 2.0, args.pages, args.common)
                log(f"load: {tool}, {args.connections} connections, {args.duration:g} s")
                load_before = os.getloadavg()[0]
                cpu_before = _cpu_s(process)
                if tool == "wrk":
                    queries = query_words(args.pages, common=args.common)
                    result = run_wrk(base, args.connections, args.duration, 1, queries)
                else:
                    result = run_client(
                        base, args.connections, args.duration, args.pages, args.common
                    )
                # Server CPU per request: what the throughput would be on idle cores does
                # not depend on how busy the shared machine was during the run.
                cpu_ms = (_cpu_s(process) - cpu_before) * 1000 / max(1, result["requests"])
                result["server_cpu_ms_per_request"] = round(cpu_ms, 3)
                result["load_average_before"] = round(load_before, 2)
        finally:
            server.close()
    result.update(
        {
            "pages": args.pages,
            "fts_detail": args.fts_detail,
            "queries": "single common words" if args.common else "1-3 words from a page",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}",
            "target": f">= {args.target_rps:g} req/s, p99 < {args.target_p99_ms:g} ms",
        }
    )
    met = (
        result["rps"] >= args.target_rps
        and result["p99_ms"] < args.target_p99_ms
        and not result["errors"]
    )
    result["met"] = met
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"GET /api/search on SQLite ({args.pages} pages, detail={args.fts_detail}, "
            f"{result['queries']}), {result['tool']}: "
            f"{result['rps']:.0f} req/s, p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
            f"p99 {result['p99_ms']} ms, {result['errors']} errors, server CPU "
            f"{result['server_cpu_ms_per_request']} ms/request, load average "
            f"{result['load_average_before']} before "
            f"({result['requests']} requests in {result['seconds']} s) "
            f"-> target {result['target']}: {'met' if met else 'MISSED'}"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
