"""The cost and the reach of politeness: ``python -m bench.polite`` (also part of ``make bench``).

200 loopback hosts (one server process, 200 ports on 127.0.0.1) x 20 small pages each, in
one shuffled URL list, crawled twice by ``fleet run --workers N``:

1. **polite**: ``FLEET_HOST_DELAY_S=0.2`` (and the default ``FLEET_HOST_CONCURRENCY=2``,
   robots.txt obeyed: every host answers 404 for it, so the fleet fetches 200 of them);
2. **off**: ``FLEET_ROBOTS=ignore``, no per-host limits (no politeness state at all).

The server logs the start of every request per host. Figures:

* the polite crawl's rate at the server (pages / time from its first to its last page
  request) against the ideal rate the limits allow: every host busy from the start, 20
  requests 0.2 s apart, i.e. 200 x 20 pages in 19 x 0.2 = 3.8 s (~1,050 pages/s). The
  target is >= 80% of that ideal; when the machine cannot reach it even without limits (the
  "off" run), the off rate is the ceiling and is shown next to it;
* no host ever saw two starts closer than the delay (fleet-wide, measured at the server);
* the CPU cost of the politeness bookkeeping per page: CPU time of the whole process tree
  (fleet run, nats-server, workers, indexer), polite minus off, per page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from bench.run import REPO, ProcessRun, log, run_measured

HOSTS = 200
PAGES_PER_HOST = 20
DELAY_S = 0.2
TARGET_SHARE = 0.8
WORDS = [
    "harbour",
    "tide",
    "knot",
    "sail",
    "anchor",
    "chart",
    "compass",
    "keel",
    "mast",
    "rope",
    "wind",
    "swell",
]


def page_html(port: int, n: int) -> bytes:
    words = " ".join(WORDS[(port + n + i) % len(WORDS)] for i in range(150))
    links = "".join(f'<a href="/p/{(n + i) % PAGES_PER_HOST}.html">p{i}</a> ' for i in range(5))
    return (
        f'<!doctype html><html lang="en"><head><title>Host {port} page {n}</title></head>'
        f"<body><main><h1>Page {n}</h1><p>host{port} page{n} {words}</p><p>{links}</p>"
        "</main></body></html>"
    ).encode()


# --------------------------------------------------------------------------- the server


async def serve(hosts: int, log_path: Path) -> None:
    """``hosts`` ports on 127.0.0.1; prints {"ports": [...]} when ready; on SIGTERM or end
    of stdin writes every request as [port, path, start] to ``log_path``."""
    requests: list[tuple[int, str, float]] = []
    html = {"Content-Type": "text/html; charset=utf-8"}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        port = int(sock[1]) if sock else 0
        requests.append((port, request.path, time.time()))
        if request.path.startswith("/p/") and request.path.endswith(".html"):
            try:
                n = int(request.path[3:-5])
            except ValueError:
                n = -1
            if 0 <= n < PAGES_PER_HOST:
                return web.Response(body=page_html(port, n), headers=html)
        return web.Response(status=404, text="not here")

    runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
    await runner.setup()
    ports = []
    for _ in range(hosts):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        await web.SockSite(runner, sock).start()
        ports.append(sock.getsockname()[1])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 65536):
                pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"ports": ports}), flush=True)
    await stop.wait()
    log_path.write_text(json.dumps(requests))
    await runner.cleanup()


class HostsServer:
    """The 200-port server as a child process; ``requests()`` after it stopped."""

    def __init__(self, workdir: Path, hosts: int, name: str) -> None:
        self.log_path = workdir / f"polite-{name}-requests.json"
        self.hosts = hosts
        self.ports: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HostsServer:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.polite",
                "--serve",
                "--hosts",
                str(self.hosts),
                "--log",
                str(self.log_path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.__exit__()
            raise RuntimeError("the politeness bench server did not start")
        self.ports = list(json.loads(line)["ports"])
        return self

    def stop(self) -> list[tuple[int, str, float]]:
        """Stop the server; every request it saw as (port, path, start)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        try:
            rows = json.loads(self.log_path.read_text())
        except (OSError, ValueError):
            return []
        return [(int(p), str(path), float(t)) for p, path, t in rows]

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the runs


@dataclasses.dataclass
class PoliteRun:
    name: str
    ok: bool
    indexed: int
    wall_s: float
    cpu_s: float
    window_s: float  # first to last page request, at the server
    pages_per_s: float  # at the server, over that window
    min_gap_s: float | None  # smallest gap between two starts on one host
    robots_fetches: int
    error: str = ""
    cpu_breakdown: list[tuple[str, float]] = dataclasses.field(default_factory=list)


def _fleet_run(
    name: str, urls_file: Path, workdir: Path, env_extra: dict[str, str], workers: int
) -> tuple[ProcessRun, dict[str, Any]]:
    db = workdir / f"polite-{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_ALLOW_HOSTS="127.0.0.1", FLEET_RENDER="never", **env_extra)
    command = [
        sys.executable,
        "-m",
        "fleet",
        "run",
        str(urls_file),
        "--workers",
        str(workers),
        "--sink",
        f"sqlite:///{db}",
        "--json",
    ]
    run = run_measured(command, env=env, workdir=workdir, name=f"polite-{name}", timeout_s=600)
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        lines = run.stdout_path.read_text().strip().splitlines()
        summary = json.loads(lines[-1]) if lines else {}
    return run, summary


def _measure(
    name: str, run: ProcessRun, summary: dict[str, Any], requests: list[tuple[int, str, float]]
) -> PoliteRun:
    pages = [(port, t) for port, path, t in requests if path.startswith("/p/")]
    robots = sum(1 for _, path, _ in requests if path == "/robots.txt")
    by_host: dict[int, list[float]] = defaultdict(list)
    for port, t in pages:
        by_host[port].append(t)
    gaps = [
        b - a
        for starts in by_host.values()
        for a, b in zip(sorted(starts), sorted(starts)[1:], strict=False)
    ]
    window = max(t for _, t in pages) - min(t for _, t in pages) if len(pages) > 1 else 0.0
    indexed = int(summary.get("indexed", 0) or 0)
    error = ""
    if run.exit_code != 0:
        error = f"exit status {run.exit_code}"
    return PoliteRun(
        name=name,
        ok=run.exit_code == 0 and indexed == len(pages) > 0,
        indexed=indexed,
        wall_s=run.wall_s,
        cpu_s=run.tree.cpu_seconds,
        window_s=window,
        pages_per_s=len(pages) / window if window > 0 else 0.0,
        min_gap_s=min(gaps) if gaps else None,
        robots_fetches=robots,
        error=error,
        cpu_breakdown=run.tree.cpu_breakdown,
    )


RUNS: dict[str, dict[str, str]] = {
    "polite": {"FLEET_HOST_DELAY_S": str(DELAY_S)},
    "off": {"FLEET_ROBOTS": "ignore", "FLEET_HOST_CONCURRENCY": "0", "FLEET_HOST_DELAY_S": "0"},
}


def run_politeness(
    workdir: Path, *, workers: int, hosts: int = HOSTS, only: str | None = None
) -> dict[str, Any]:
    """Both runs (or ``only`` one), each against a fresh server; the figures as a dict."""
    ideal_window = (PAGES_PER_HOST - 1) * DELAY_S
    pages = hosts * PAGES_PER_HOST
    runs: dict[str, PoliteRun] = {}
    for name, env_extra in RUNS.items():
        if only is not None and name != only:
            continue
        with HostsServer(workdir, hosts, name) as server:
            urls = [
                f"http://127.0.0.1:{port}/p/{n}.html"
                for port in server.ports
                for n in range(PAGES_PER_HOST)
            ]
            random.Random(7).shuffle(urls)
            urls_file = workdir / "polite-urls.txt"
            urls_file.write_text("\n".join(urls) + "\n")
            log(f"politeness ({name}): {hosts} hosts x {PAGES_PER_HOST} pages, {workers} workers")
            run, summary = _fleet_run(name, urls_file, workdir, env_extra, workers)
            requests = server.stop()
        runs[name] = _measure(name, run, summary, requests)
        log(
            f"politeness ({name}): {runs[name].indexed} pages, {runs[name].pages_per_s:.0f} "
            f"pages/s at the server over {runs[name].window_s:.2f} s"
        )
    if only is not None:
        return {"runs": {k: dataclasses.asdict(v) for k, v in runs.items()}}
    polite, off = runs["polite"], runs["off"]
    ideal_rate = pages / ideal_window
    ceiling = min(ideal_rate, off.pages_per_s) if off.ok else ideal_rate
    cpu_per_page_ms = (polite.cpu_s - off.cpu_s) / pages * 1000 if polite.ok and off.ok else None
    return {
        "hosts": hosts,
        "pages_per_host": PAGES_PER_HOST,
        "delay_s": DELAY_S,
        "workers": workers,
        "ideal_window_s": ideal_window,
        "ideal_pages_per_s": ideal_rate,
        "ceiling_pages_per_s": ceiling,
        "share_of_ideal": polite.pages_per_s / ideal_rate if polite.ok else None,
        "share_of_ceiling": polite.pages_per_s / ceiling if polite.ok and ceiling else None,
        "target_share": TARGET_SHARE,
        "politeness_cpu_ms_per_page": cpu_per_page_ms,
        "runs": {k: dataclasses.asdict(v) for k, v in runs.items()},
    }


def render(figures: dict[str, Any]) -> str:
    """The politeness section of the bench report."""
    polite, off = figures["runs"]["polite"], figures["runs"]["off"]

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}%"

    target = figures["target_share"]
    verdict = (
        "PASS"
        if (figures["share_of_ceiling"] or 0) >= target
        else ("MISS" if figures["share_of_ceiling"] is not None else "N/A")
    )
    cpu = figures["politeness_cpu_ms_per_page"]
    lines = [
        "",
        f"politeness: {figures['hosts']} loopback hosts x {figures['pages_per_host']} pages, "
        f"FLEET_HOST_DELAY_S={figures['delay_s']}, {figures['workers']} workers",
        f"  {'':<44}{'polite':>14}{'off':>14}",
        f"  {'status':<44}{'ok' if polite['ok'] else 'FAILED':>14}"
        f"{'ok' if off['ok'] else 'FAILED':>14}",
        f"  {'pages indexed':<44}{polite['indexed']:>14}{off['indexed']:>14}",
        f"  {'pages/s at the server (first to last page)':<44}"
        f"{polite['pages_per_s']:>14.0f}{off['pages_per_s']:>14.0f}",
        f"  {'  over (s)':<44}{polite['window_s']:>14.2f}{off['window_s']:>14.2f}",
        f"  {'smallest gap between starts on a host (s)':<44}"
        f"{(polite['min_gap_s'] or 0):>14.3f}{(off['min_gap_s'] or 0):>14.3f}",
        f"  {'robots.txt fetches':<44}{polite['robots_fetches']:>14}{off['robots_fetches']:>14}",
        f"  {'wall time of fleet run (s)':<44}{polite['wall_s']:>14.2f}{off['wall_s']:>14.2f}",
        f"  {'CPU time, process tree (s)':<44}{polite['cpu_s']:>14.1f}{off['cpu_s']:>14.1f}",
        "",
        f"  ideal rate the limits allow: {figures['ideal_pages_per_s']:.0f} pages/s "
        f"({figures['ideal_window_s']:.1f} s); polite run reached "
        f"{share(figures['share_of_ideal'])}",
        f"  ceiling (the lower of the ideal and the off run): "
        f"{figures['ceiling_pages_per_s']:.0f} pages/s; polite run reached "
        f"{share(figures['share_of_ceiling'])}",
        "  politeness bookkeeping: "
        + ("-" if cpu is None else f"{cpu:.2f} ms of CPU per page (polite - off, whole tree)"),
        f"    {verdict:<5} polite crawl >= {target * 100:.0f}% of the rate its limits allow",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, stdout: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, default=HOSTS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=sorted(RUNS), default=None, help="one run (JSON)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.serve:
        assert args.log is not None
        asyncio.run(serve(args.hosts, args.log))
        return 0
    workdir = args.workdir or Path(
        subprocess.check_output(["mktemp", "-d", "/tmp/fleet-polite-XXXX"]).decode().strip()
    )
    workdir.mkdir(parents=True, exist_ok=True)
    figures = run_politeness(workdir, workers=args.workers, hosts=args.hosts, only=args.only)
    as_json = args.json or args.only is not None
    stdout.write(json.dumps(figures, indent=2) + "\n" if as_json else render(figures))
    ok = all(run["ok"] for run in figures["runs"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
