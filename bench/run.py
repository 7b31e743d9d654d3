"""fleet vs. Scrapy on the same generated site, in one run: ``python -m bench.run``.

1. Generate a deterministic site (--pages, default 2,000; --quick: 300) into a work dir,
   or with ``--corpus DIR`` take every ``*.html`` of an existing directory of real pages
   (e.g. /usr/share/doc/python3-dev/html, 530 Python doc pages).
2. Serve it on 127.0.0.1 from a separate process (nginx when installed, else aiohttp).
3. Write the URL list (every page once).
4. Baseline: Scrapy fetches exactly that list and extracts the same fields (subprocess).
5. fleet: ``fleet run URLS --workers N --sink sqlite:///WORKDIR/bench.db --json`` with a
   private nats-server, end to end, ``FLEET_RENDER=never`` (Scrapy renders nothing either).
6. Print pages/s, wall time, peak RSS and CPU time of both, CPU per page (whole process
   tree: for fleet the workers, indexer, `fleet run` and nats-server, with a per-process
   table), the ratios (pages/s, CPU per page) and the targets.
   With --repeat N, steps 4-5 alternate N times and each tool's median round is shown.
7. ``fleet publish`` (bench/publish.py, unless --skip-publish): URLs/s and CPU per URL of
   publishing 200,000 URLs with dedup, validation and exact counts (target 25,000 URLs/s).
8. Politeness (bench/polite.py, unless --skip-polite): 200 loopback hosts x 20 pages with
   FLEET_HOST_DELAY_S=0.2, against the rate those limits allow, and the CPU cost of the
   politeness bookkeeping per page. Steps 4-5 run with politeness off for their one host.

Both tools run as child processes of this one and are sampled every 0.1 s with psutil (RSS
summed over the whole process tree). Targets are reported as PASS/MISS; a MISS does not change
the exit status. Exit status 1 means a run did not complete (crash, timeout, bad output).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import psutil

import fleet
from bench.site import MAX_PAGE_BYTES, MIN_PAGE_BYTES, corpus_site, generate_site

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAGES = 2000
QUICK_PAGES = 300
TARGET_RATIO = 10.0
TARGET_PAGES_PER_S = 300.0
TARGET_CPU_RATIO = 0.2  # fleet's CPU per page (all its processes) / Scrapy's
SAMPLE_INTERVAL_S = 0.1
SETTLE_S = 2.0  # pause between the two runs
BUSY_PERCENT = 15.0  # warn when the machine is busier than this before the runs
MIB = 1024 * 1024


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class TreeStats:
    peak_rss_bytes: int = 0
    peak_processes: int = 0
    cpu_seconds: float = 0.0
    samples: int = 0
    # RSS by process at the moment of the peak, largest first: [(command, bytes)].
    peak_breakdown: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    # CPU seconds by command (processes with the same command summed), largest first.
    cpu_breakdown: list[tuple[str, float]] = dataclasses.field(default_factory=list)


class TreeSampler:
    """Samples a process and all its descendants every SAMPLE_INTERVAL_S in a thread.

    RSS is summed over the tree (pages shared between processes count once per process, so
    this overstates a forking program a little). CPU time is the last value seen per pid,
    summed: a process living less than one interval may be missed.
    """

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.stats = TreeStats()
        self.seen: dict[int, psutil.Process] = {}
        self._cpu: dict[int, float] = {}
        self._labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.stats.cpu_seconds = sum(self._cpu.values())
        by_label: dict[str, float] = {}
        count: dict[str, int] = {}
        for pid, seconds in self._cpu.items():
            label = self._labels.get(pid, str(pid))
            by_label[label] = by_label.get(label, 0.0) + seconds
            count[label] = count.get(label, 0) + 1
        self.stats.cpu_breakdown = sorted(
            (
                (f"{label} x{count[label]}" if count[label] > 1 else label, sec)
                for label, sec in by_label.items()
            ),
            key=lambda r: -r[1],
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _label(self, proc: psutil.Process) -> str:
        # Read every time, not cached: a child seen between fork and exec still carries its
        # parent's command line (nats-server and the workers are started by `fleet run`).
        args = proc.cmdline()
        if not args:  # exiting (its command line is gone): keep what it was called
            return self._labels.setdefault(proc.pid, proc.name())
        label = _short_command(args)
        self._labels[proc.pid] = label
        return label

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        total = 0
        rows: list[tuple[str, int]] = []
        for proc in procs:
            try:
                with proc.oneshot():
                    rss = int(proc.memory_info().rss)
                    times = proc.cpu_times()
                label = self._label(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.seen.setdefault(proc.pid, proc)
            self._cpu[proc.pid] = float(times.user + times.system)
            total += rss
            rows.append((label, rss))
        self.stats.samples += 1
        self.stats.peak_processes = max(self.stats.peak_processes, len(rows))
        if total > self.stats.peak_rss_bytes:
            self.stats.peak_rss_bytes = total
            self.stats.peak_breakdown = sorted(rows, key=lambda r: -r[1])

    def alive_descendants(self) -> list[psutil.Process]:
        alive = []
        for pid, proc in self.seen.items():
            if pid == self.root.pid:
                continue
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive


def _short_command(args: list[str]) -> str:
    """'python -m fleet worker ...' -> 'fleet worker'; '/x/nats-server -p 1' -> 'nats-server'."""
    if not args:
        return ""
    if len(args) >= 3 and args[1] == "-m":
        return " ".join([args[2], *[a for a in args[3:4] if not a.startswith("-")]])
    first = Path(args[0]).name
    if first.startswith("python") and len(args) > 1:
        return Path(args[1]).name
    return first


@dataclasses.dataclass
class ProcessRun:
    command: list[str]
    exit_code: int | None
    wall_s: float
    timed_out: bool
    tree: TreeStats
    harness_cpu_s: float  # this process (mostly the sampler) during the run
    leftovers: list[str]
    stdout_path: Path
    stderr_path: Path


def _finish_off(procs: list[psutil.Process], grace_s: float) -> list[str]:
    """Wait up to grace_s for ``procs`` to exit, SIGKILL the rest; return what was killed."""
    if not procs:
        return []
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    killed = []
    for child in alive:
        label = str(child.pid)
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue  # dead, waiting for its parent (or init) to reap it
            args = child.cmdline()
            label = f"{child.pid} {_short_command(args) if args else child.name()}"
        with contextlib.suppress(psutil.Error):
            child.kill()
        killed.append(label)
    return killed


def _stop_tree(proc: subprocess.Popen[bytes], sampler: TreeSampler, grace_s: float) -> None:
    """SIGTERM the root (it should stop its own children), then SIGKILL what is left."""
    sampler.sample()  # know every current descendant before the root goes
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    _finish_off(sampler.alive_descendants(), grace_s=3)


def run_measured(
    command: list[str],
    *,
    env: dict[str, str],
    workdir: Path,
    name: str,
    timeout_s: float,
) -> ProcessRun:
    """Run ``command`` to completion (or timeout) while sampling its process tree."""
    stdout_path = workdir / f"{name}.stdout"
    stderr_path = workdir / f"{name}.stderr"
    harness = psutil.Process()
    harness_before = sum(harness.cpu_times()[:2])
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=REPO
        )
        timed_out = False
        sampler = TreeSampler(proc.pid)
        try:
            with sampler:
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    log(f"{name}: still running after {timeout_s:.0f} s, stopping it")
                    _stop_tree(proc, sampler, grace_s=15)
        except BaseException:  # Ctrl-C: do not leave the tree running
            _stop_tree(proc, sampler, grace_s=5)
            raise
        wall = time.perf_counter() - start
    harness_cpu = sum(harness.cpu_times()[:2]) - harness_before
    # After a clean exit nothing should be left; give stragglers a moment, then kill them.
    labels = _finish_off(sampler.alive_descendants(), grace_s=3)
    return ProcessRun(
        command=command,
        exit_code=None if timed_out else proc.returncode,
        wall_s=wall,
        timed_out=timed_out,
        tree=sampler.stats,
        harness_cpu_s=harness_cpu,
        leftovers=labels,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
    )


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- site server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"site server exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"site server not listening on port {port} after {timeout_s:.0f} s")


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    types {{ text/html html; }}
    default_type text/html;
    charset utf-8;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {root};
        index index.html;
        location / {{ try_files $uri $uri/index.html =404; }}
    }}
}}
"""


class SiteServer:
    """The site, served from its own process: nginx if requested/installed, else aiohttp."""

    def __init__(self, root: Path, workdir: Path, kind: str) -> None:
        self.root = root
        self.workdir = workdir
        nginx = shutil.which("nginx")
        if kind == "auto":
            kind = "nginx" if nginx else "aiohttp"
        if kind == "nginx" and not nginx:
            raise RuntimeError("--server nginx: no nginx on PATH")
        self.kind = kind
        self.nginx = nginx or "nginx"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self._log = (workdir / "server.log").open("wb")

    def __enter__(self) -> SiteServer:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        if self.kind == "nginx":
            prefix = self.workdir / "nginx"
            prefix.mkdir(exist_ok=True)
            self.port = free_port()
            conf = prefix / "nginx.conf"
            conf.write_text(NGINX_CONF.format(prefix=prefix, port=self.port, root=self.root))
            self.proc = subprocess.Popen(
                [self.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
            )
            _wait_listening(self.port, self.proc, timeout_s=15)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.server", "--root", str(self.root)],
                stdin=subprocess.PIPE,  # closed by us (or by our death): the server stops
                stdout=subprocess.PIPE,
                stderr=self._log,
                cwd=REPO,
            )
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 60)
            line = self.proc.stdout.readline() if ready else b""
            if not line:
                raise RuntimeError(
                    f"site server did not start: {_tail(self.workdir / 'server.log')}"
                )
            self.port = int(json.loads(line)["port"])
            _wait_listening(self.port, self.proc, timeout_s=15)
        self._ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        if self._ps is None:
            return 0.0
        try:
            times = self._ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        self._log.close()


# --------------------------------------------------------------------------- the two runs


@dataclasses.dataclass
class ToolResult:
    name: str
    ok: bool
    pages_done: int
    wall_s: float
    steady_s: float | None  # crawl time without start-up: Scrapy stats / fleet's own figure
    peak_rss_bytes: int
    cpu_s: float
    server_cpu_s: float
    peak_processes: int
    peak_breakdown: list[tuple[str, int]]
    cpu_breakdown: list[tuple[str, float]]
    exit_code: int | None
    error: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def measured(
        cls, run: ProcessRun, *, steady: object, server_cpu_s: float, **fields: Any
    ) -> ToolResult:
        """A result with the figures every tool's measured run has in common."""
        return cls(
            wall_s=run.wall_s,
            steady_s=float(steady) if isinstance(steady, int | float) else None,
            peak_rss_bytes=run.tree.peak_rss_bytes,
            cpu_s=run.tree.cpu_seconds,
            server_cpu_s=server_cpu_s,
            peak_processes=run.tree.peak_processes,
            peak_breakdown=run.tree.peak_breakdown,
            cpu_breakdown=run.tree.cpu_breakdown,
            exit_code=run.exit_code,
            **fields,
        ).with_details(samples=run.tree.samples, harness_cpu_s=round(run.harness_cpu_s, 2))

    def with_details(self, **extra: Any) -> ToolResult:
        self.details.update(extra)
        return self

    def fail_on(self, run: ProcessRun, timeout_s: float) -> bool:
        """Record a timeout or a non-zero exit as the error; True if there was one."""
        if run.timed_out:
            self.error = f"timed out after {timeout_s:.0f} s"
        elif run.exit_code != 0:
            self.error = f"exit status {run.exit_code}: {_tail(run.stderr_path)}"
        return bool(self.error)

    @property
    def wall_pages_per_s(self) -> float:
        return self.pages_done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_page(self) -> float | None:
        """CPU time of the whole process tree (start-up included) per page done, in ms."""
        return 1000 * self.cpu_s / self.pages_done if self.pages_done else None

    @property
    def steady_pages_per_s(self) -> float | None:
        if self.steady_s is None or self.steady_s <= 0:
            return None
        reported = self.details.get("pages_per_s")
        if isinstance(reported, int | float):
            return float(reported)
        return self.pages_done / self.steady_s


def run_scrapy(
    urls_file: Path,
    pages: int,
    server: SiteServer,
    workdir: Path,
    concurrency: int,
    timeout_s: float,
) -> ToolResult:
    items_file = workdir / "scrapy-items.jl"
    stats_file = workdir / "scrapy-stats.json"
    command = [
        sys.executable,
        "-m",
        "bench.scrapy_baseline",
        "--urls",
        str(urls_file),
        "--out",
        str(items_file),
        "--stats",
        str(stats_file),
        "--concurrency",
        str(concurrency),
    ]
    cpu_before = server.cpu_seconds()
    run = run_measured(
        command, env=dict(os.environ), workdir=workdir, name="scrapy", timeout_s=timeout_s
    )
    server_cpu = server.cpu_seconds() - cpu_before
    items = 0
    if items_file.exists():
        with items_file.open("rb") as fh:
            items = sum(1 for line in fh if line.strip())
    stats: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        stats = json.loads(stats_file.read_text())
    crawl_s = stats.get("elapsed_time_seconds")
    result = ToolResult.measured(
        run,
        name="scrapy",
        ok=run.exit_code == 0 and items > 0,
        pages_done=items,
        steady=crawl_s,
        server_cpu_s=server_cpu,
        details={
            "version": _version("scrapy"),
            "concurrent_requests": concurrency,
            "concurrent_requests_per_domain": concurrency,
            "finish_reason": stats.get("finish_reason"),
            "responses_200": stats.get("downloader/response_status_count/200", 0),
            "errors_logged": stats.get("log_count/ERROR", 0),
            "retries": stats.get("retry/count", 0),
        },
    )
    if not result.fail_on(run, timeout_s) and items == 0:
        result.error = f"no items written: {_tail(run.stderr_path)}"
    if items != pages:
        result.warnings.append(f"Scrapy wrote {items} items for {pages} pages")
    if run.leftovers:
        result.warnings.append(f"Scrapy left processes behind (killed): {run.leftovers}")
    return result


FLEET_FIELDS = ("published", "indexed", "dead_lettered", "invalid", "seconds", "pages_per_s")


def _parse_fleet_json(text: str) -> dict[str, Any]:
    """The last line of stdout that is a JSON object with the contract's fields."""
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and all(key in data for key in FLEET_FIELDS):
            return data
    # Maybe pretty-printed over several lines.
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict) and all(key in data for key in FLEET_FIELDS):
            return data
    raise ValueError("no JSON object with " + ", ".join(FLEET_FIELDS) + " on stdout")


def _sink_rows(db: Path) -> int | None:
    """Rows in the sqlite sink's pages table, if there is one (a cross-check, not the figure)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if "pages" not in tables:
                return None
            row = conn.execute("SELECT count(*) FROM pages").fetchone()
            return int(row[0])
    except sqlite3.Error:
        return None


def run_fleet(
    urls_file: Path, pages: int, server: SiteServer, workdir: Path, workers: int, timeout_s: float
) -> ToolResult:
    db = workdir / "bench.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
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
    env = dict(os.environ)
    env.pop("FLEET_NATS_URL", None)  # unset: fleet starts its own private nats-server
    env["FLEET_ALLOW_HOSTS"] = f"127.0.0.1:{server.port}"
    # One host, ours, many requests at once: no per-host limits (robots.txt is a 404 there;
    # step 7 measures politeness on many hosts).
    env["FLEET_HOST_CONCURRENCY"] = "0"
    env["FLEET_HOST_DELAY_S"] = "0"
    # The HTTP path against Scrapy's (which renders nothing): no browser (bench/render.py
    # measures rendering).
    env["FLEET_RENDER"] = "never"
    cpu_before = server.cpu_seconds()
    run = run_measured(command, env=env, workdir=workdir, name="fleet", timeout_s=timeout_s)
    server_cpu = server.cpu_seconds() - cpu_before
    reported: dict[str, Any] = {}
    parse_error = ""
    try:
        reported = _parse_fleet_json(run.stdout_path.read_text(errors="replace"))
    except (OSError, ValueError) as exc:
        parse_error = str(exc)
    indexed = int(reported.get("indexed", 0) or 0)
    seconds = reported.get("seconds")
    rows = _sink_rows(db)
    result = ToolResult.measured(
        run,
        name="fleet",
        ok=run.exit_code == 0 and not parse_error,
        pages_done=indexed,
        steady=seconds,
        server_cpu_s=server_cpu,
        details={
            "version": _version("fleet"),
            "workers": workers,
            "sink_rows": rows,
            **reported,
        },
    )
    if not result.fail_on(run, timeout_s) and parse_error:
        result.error = f"{parse_error}; stdout: {_tail(run.stdout_path, 5)!r}"
    if reported:
        if indexed != pages:
            result.warnings.append(f"fleet indexed {indexed} of {pages} pages")
        for key in ("published", "dead_lettered", "invalid"):
            want = pages if key == "published" else 0
            if reported.get(key) != want:
                result.warnings.append(
                    f"fleet reported {key}={reported.get(key)} (expected {want})"
                )
        if rows is not None and rows != indexed:
            result.warnings.append(f"sink has {rows} rows in 'pages', fleet reported {indexed}")
    if run.leftovers:
        result.warnings.append(f"fleet left processes behind (killed): {run.leftovers}")
    return result


# --------------------------------------------------------------------------- report


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _target(
    name: str, value: float | None, goal: float, unit: str, *, at_most: bool = False
) -> dict[str, Any]:
    """A target row: PASS when ``value`` >= ``goal`` (or <= with ``at_most``)."""
    met = value is not None and (value <= goal if at_most else value >= goal)
    status = "N/A" if value is None else ("PASS" if met else "MISS")
    return {"target": name, "value": value, "goal": goal, "unit": unit, "status": status}


def evaluate(scrapy: ToolResult | None, fleet: ToolResult | None) -> dict[str, Any]:
    ratios: dict[str, float | None] = {"wall_clock": None, "steady_state": None, "cpu": None}
    if scrapy and fleet and scrapy.ok and fleet.ok:
        s_cpu, f_cpu = scrapy.cpu_ms_per_page, fleet.cpu_ms_per_page
        if s_cpu and f_cpu:
            ratios["cpu"] = f_cpu / s_cpu
        if scrapy.wall_pages_per_s > 0:
            ratios["wall_clock"] = fleet.wall_pages_per_s / scrapy.wall_pages_per_s
        s_steady, f_steady = scrapy.steady_pages_per_s, fleet.steady_pages_per_s
        if s_steady and f_steady:
            ratios["steady_state"] = f_steady / s_steady
    fleet_ok = fleet is not None and fleet.ok
    targets = [
        _target(
            "fleet CPU per page <= 0.2x Scrapy's (all processes)",
            ratios["cpu"],
            TARGET_CPU_RATIO,
            "x",
            at_most=True,
        ),
        _target(
            "fleet >= 10x Scrapy, end to end (wall clock)", ratios["wall_clock"], TARGET_RATIO, "x"
        ),
        _target(
            "fleet >= 10x Scrapy, steady state (fleet-reported vs Scrapy crawl time)",
            ratios["steady_state"],
            TARGET_RATIO,
            "x",
        ),
        _target(
            "fleet >= 300 pages/s, end to end (wall clock)",
            fleet.wall_pages_per_s if fleet and fleet_ok else None,
            TARGET_PAGES_PER_S,
            "pages/s",
        ),
        _target(
            "fleet >= 300 pages/s (fleet-reported)",
            fleet.steady_pages_per_s if fleet and fleet_ok else None,
            TARGET_PAGES_PER_S,
            "pages/s",
        ),
    ]
    return {"ratios": ratios, "targets": targets}


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


def _cpu_table(scrapy: ToolResult | None, fleet: ToolResult | None) -> list[str]:
    """CPU per page by process (same command summed), each tool's median round."""
    lines = ["", "  CPU per page by process (ms, whole run incl. start-up):"]
    for r in (scrapy, fleet):
        if r is None or not r.pages_done:
            continue
        for name, sec in r.cpu_breakdown:
            lines.append(f"    {r.name:<7} {name:<28} {1000 * sec / r.pages_done:>8.3f}")
        lines.append(f"    {r.name:<7} {'total':<28} {_fmt(r.cpu_ms_per_page, '>8.3f')}")
    return lines


def render(
    report: dict[str, Any],
    scrapy: ToolResult | None,
    fleet: ToolResult | None,
    scrapy_runs: Sequence[ToolResult] = (),
    fleet_runs: Sequence[ToolResult] = (),
) -> str:
    site = report["site"]
    machine = report["machine"]
    lines = [
        "",
        f"fleet benchmark: {site['pages']} pages, {site['total_bytes'] / 1e6:.1f} MB "
        f"({site['min_bytes'] // 1000}-{site['max_bytes'] // 1000} KB/page, "
        f"{site['internal_links_per_page']:.0f} internal links/page), "
        f"served by {report['server']} on 127.0.0.1",
        f"machine: {machine['usable_cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, "
        f"CPUs {machine.get('cpu_busy_percent_before', 0):.0f}% busy before the runs",
        "",
    ]
    cols: list[tuple[str, ToolResult | None]] = []
    if scrapy is not None:
        label = f"Scrapy {scrapy.details['version']} (CR={scrapy.details['concurrent_requests']})"
        cols.append((label, scrapy))
    if fleet is not None:
        cols.append((f"fleet ({fleet.details['workers']} workers)", fleet))

    def row(name: str, cell: Any) -> str:
        cells = [cell(r) if r is not None else "-" for _, r in cols]
        return f"  {name:<34}" + "".join(f"{c:>28}" for c in cells)

    lines.append(f"  {'':<34}" + "".join(f"{label:>28}" for label, _ in cols))
    lines.append(row("status", lambda r: "ok" if r.ok else "FAILED"))
    lines.append(row("pages done", lambda r: f"{r.pages_done} / {site['pages']}"))
    lines.append(row("wall time incl. start-up (s)", lambda r: f"{r.wall_s:.2f}"))
    lines.append(row("pages/s, wall clock", lambda r: f"{r.wall_pages_per_s:.1f}"))
    lines.append(
        row(
            "pages/s, steady state",
            lambda r: (
                f"{_fmt(r.steady_pages_per_s)} "
                + ("(crawl time)" if r.name == "scrapy" else "(fleet-reported)")
            ),
        )
    )
    lines.append(row("  over (s)", lambda r: _fmt(r.steady_s, ".2f")))
    lines.append(row("peak RSS, process tree", lambda r: _mib(r.peak_rss_bytes)))
    lines.append(row("peak processes in tree", lambda r: str(r.peak_processes)))
    lines.append(row("CPU time, process tree (s)", lambda r: f"{r.cpu_s:.1f}"))
    lines.append(row("CPU per page, process tree (ms)", lambda r: _fmt(r.cpu_ms_per_page, ".2f")))
    lines.append(row("site server CPU time (s)", lambda r: f"{r.server_cpu_s:.1f}"))
    if report.get("repeat", 1) > 1:
        runs = {"scrapy": scrapy_runs, "fleet": fleet_runs}

        def spread(r: ToolResult) -> str:
            rates = sorted(x.wall_pages_per_s for x in runs[r.name] if x.ok)
            return f"{rates[0]:.0f}-{rates[-1]:.0f} ({len(rates)} ok)" if rates else "-"

        lines.append(row("pages/s wall, all rounds", spread))
    lines.append(row("bench sampler CPU time (s)", lambda r: f"{r.details['harness_cpu_s']:.1f}"))
    ratios = report["evaluation"]["ratios"]
    lines += [
        "",
        f"  ratio fleet/Scrapy, wall clock:   {_fmt(ratios['wall_clock'], '.2f', 'x')}",
        f"  ratio fleet/Scrapy, steady state: {_fmt(ratios['steady_state'], '.2f', 'x')}",
        f"  ratio fleet/Scrapy, CPU per page: {_fmt(ratios['cpu'], '.3f', 'x')}",
        "",
        "  targets (reported, never fatal):",
    ]
    for t in report["evaluation"]["targets"]:
        spec = ".2f" if t["unit"] == "x" else ".1f"
        value = _fmt(t["value"], spec, "x" if t["unit"] == "x" else " pages/s")
        lines.append(f"    {t['status']:<5} {t['target']:<72} {value}")
    lines += _cpu_table(scrapy, fleet)
    for r in (scrapy, fleet):
        if r is None:
            continue
        if r.peak_breakdown and len(r.peak_breakdown) > 1:
            parts = ", ".join(f"{name} {_mib(rss)}" for name, rss in r.peak_breakdown[:8])
            lines.append(f"\n  {r.name} RSS at peak: {parts}")
        if r.cpu_breakdown and len(r.cpu_breakdown) > 1:
            parts = ", ".join(f"{name} {sec:.1f} s" for name, sec in r.cpu_breakdown[:8])
            lines.append(f"  {r.name} CPU time: {parts}")
    all_runs = [*scrapy_runs, *fleet_runs] or [r for r in (scrapy, fleet) if r is not None]
    for r in all_runs:
        if r.error:
            lines.append(f"\n  {r.name} FAILED: {r.error}")
        for warning in r.warnings:
            lines.append(f"  WARNING ({r.name}): {warning}")
    if report.get("workdir_kept"):
        lines.append(f"\n  work dir kept: {report['workdir_kept']}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark fleet against a Scrapy baseline on a generated loopback site.",
    )
    parser.add_argument("--pages", type=int, default=None, help=f"pages (default {DEFAULT_PAGES})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PAGES} pages")
    parser.add_argument("--workers", type=int, default=2, help="fleet workers (default 2)")
    parser.add_argument(
        "--scrapy-concurrency",
        type=int,
        default=32,
        help="Scrapy CONCURRENT_REQUESTS and _PER_DOMAIN (default 32; Scrapy's are 16/8)",
    )
    parser.add_argument("--seed", type=int, default=1, help="site generator seed (default 1)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="DIR",
        help="serve this directory of real HTML pages (every *.html once, e.g. "
        "/usr/share/doc/python3-dev/html) instead of the generated site; --pages N takes the "
        "first N",
    )
    parser.add_argument("--server", choices=("auto", "aiohttp", "nginx"), default="auto")
    parser.add_argument("--skip-scrapy", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument(
        "--skip-polite", action="store_true", help="no politeness figure (200 hosts x 20 pages)"
    )
    parser.add_argument(
        "--skip-publish", action="store_true", help="no `fleet publish` figure (bench/publish.py)"
    )
    parser.add_argument(
        "--publish-urls",
        type=int,
        default=200_000,
        help="distinct URLs for the `fleet publish` figure (default 200,000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds (Scrapy, fleet alternating); the median round of each is shown",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    if args.pages is None and args.corpus is None:
        args.pages = QUICK_PAGES if args.quick else DEFAULT_PAGES
    if min(args.pages or 1, args.workers, args.scrapy_concurrency, args.repeat) < 1:
        parser.error("--pages, --workers, --scrapy-concurrency and --repeat must be >= 1")
    return args


def _log_run(name: str, result: ToolResult) -> None:
    log(
        f"{name}: {result.pages_done} pages in {result.wall_s:.1f} s "
        f"({result.wall_pages_per_s:.1f} pages/s wall)"
        + (f" FAILED: {result.error}" if result.error else "")
    )


def _median_run(runs: Sequence[ToolResult]) -> ToolResult | None:
    """The run with the median wall-clock pages/s among completed ones (lower median)."""
    ok = sorted((r for r in runs if r.ok), key=lambda r: r.wall_pages_per_s)
    if ok:
        return ok[(len(ok) - 1) // 2]
    return runs[0] if runs else None


@contextlib.contextmanager
def _workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        yield tmp
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _result_dict(result: ToolResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    data = dataclasses.asdict(result)
    data["wall_pages_per_s"] = result.wall_pages_per_s
    data["steady_pages_per_s"] = result.steady_pages_per_s
    data["peak_rss_mib"] = round(result.peak_rss_bytes / MIB, 1)
    return data


def compile_fleet() -> None:
    """Write fleet's bytecode before the runs, as an installed wheel (or the image) has it.

    An editable install compiles fleet's ~50 modules from source in every process that
    imports them when ``.pyc`` files cannot be written (PYTHONDONTWRITEBYTECODE, read-only
    tree): ~0.1-0.3 s of CPU per fleet process, while Scrapy's site-packages come compiled.
    """
    compileall.compile_dir(Path(fleet.__file__).parent, quiet=1)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: runs stopped, server stopped


def main(argv: Sequence[str] | None = None, stdout: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    machine = machine_info()
    compile_fleet()
    with _workdir(args.workdir, args.keep) as workdir:
        log(f"work dir {workdir}")
        t0 = time.perf_counter()
        if args.corpus is not None:
            site = corpus_site(args.corpus)
            if args.pages:
                site = dataclasses.replace(site, paths=site.paths[: args.pages])
            site_dir = site.root
            log(
                f"corpus {site_dir}: {site.pages} pages, {site.total_bytes / 1e6:.1f} MB "
                f"({site.min_bytes}-{site.max_bytes} bytes/page)"
            )
        else:
            site_dir = workdir / "site"
            if site_dir.exists():
                shutil.rmtree(site_dir)
            site = generate_site(site_dir, args.pages, args.seed)
            os.sync()  # no write-back of the fresh site competing with the runs
            log(
                f"generated {site.pages} pages, {site.total_bytes / 1e6:.1f} MB "
                f"({site.min_bytes}-{site.max_bytes} bytes/page; limits {MIN_PAGE_BYTES}-"
                f"{MAX_PAGE_BYTES}) in {time.perf_counter() - t0:.1f} s"
            )
        scrapy_runs: list[ToolResult] = []
        fleet_runs: list[ToolResult] = []
        with SiteServer(site_dir, workdir, args.server) as server:
            log(f"{server.kind} serving the site on 127.0.0.1:{server.port}")
            urls_file = workdir / "urls.txt"
            base = f"http://127.0.0.1:{server.port}"
            urls_file.write_text("".join(f"{base}{p}\n" for p in site.paths))
            busy = psutil.cpu_percent(interval=1.0)
            machine["cpu_busy_percent_before"] = busy
            if busy > BUSY_PERCENT:
                log(
                    f"WARNING: the CPUs were {busy:.0f}% busy before the runs started; "
                    "other work on the machine skews both results"
                )
            # Alternate Scrapy and fleet so that drift in the machine's speed hits both.
            for round_no in range(1, args.repeat + 1):
                tag = f" (round {round_no}/{args.repeat})" if args.repeat > 1 else ""
                if not args.skip_scrapy:
                    if scrapy_runs or fleet_runs:
                        time.sleep(SETTLE_S)
                    log(
                        f"Scrapy{tag}: {site.pages} URLs, "
                        f"CONCURRENT_REQUESTS={args.scrapy_concurrency}"
                    )
                    result = run_scrapy(
                        urls_file,
                        site.pages,
                        server,
                        workdir,
                        args.scrapy_concurrency,
                        args.timeout,
                    )
                    scrapy_runs.append(result)
                    _log_run("Scrapy", result)
                if not args.skip_fleet:
                    if scrapy_runs or fleet_runs:
                        time.sleep(SETTLE_S)
                    log(f"fleet{tag}: {site.pages} URLs, {args.workers} workers")
                    result = run_fleet(
                        urls_file, site.pages, server, workdir, args.workers, args.timeout
                    )
                    fleet_runs.append(result)
                    _log_run("fleet", result)
        scrapy = _median_run(scrapy_runs)
        fleet = _median_run(fleet_runs)
        for result in (*scrapy_runs, *fleet_runs):
            for warning in result.warnings:
                log(f"WARNING ({result.name}): {warning}")
        report: dict[str, Any] = {
            "machine": machine,
            "server": server.kind,
            "site": {
                "corpus": str(site.root) if args.corpus is not None else None,
                "pages": site.pages,
                "seed": args.seed,
                "total_bytes": site.total_bytes,
                "min_bytes": site.min_bytes,
                "max_bytes": site.max_bytes,
                "internal_links_per_page": site.internal_links / site.pages,
                "external_links_per_page": site.external_links / site.pages,
            },
            "repeat": args.repeat,
            "scrapy": _result_dict(scrapy),
            "fleet": _result_dict(fleet),
            "scrapy_runs": [_result_dict(r) for r in scrapy_runs],
            "fleet_runs": [_result_dict(r) for r in fleet_runs],
            "evaluation": evaluate(scrapy, fleet),
            "workdir_kept": str(workdir) if (args.keep or args.workdir) else None,
        }
        if not args.skip_publish and not args.skip_fleet:
            from bench import publish  # noqa: PLC0415 - it imports this module

            time.sleep(SETTLE_S)
            report["publish"] = publish.run_publish(workdir, args.publish_urls)
        polite_ok = True
        if not args.skip_polite and not args.skip_fleet:
            from bench import polite  # noqa: PLC0415 - it imports this module

            time.sleep(SETTLE_S)
            report["politeness"] = polite.run_politeness(workdir, workers=args.workers)
            polite_ok = all(r["ok"] for r in report["politeness"]["runs"].values())
    if args.json:
        stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        stdout.write(render(report, scrapy, fleet, scrapy_runs, fleet_runs))
        if "publish" in report:
            from bench import publish  # noqa: PLC0415

            stdout.write(publish.render(report["publish"]))
        if "politeness" in report:
            from bench import polite  # noqa: PLC0415

            stdout.write(polite.render(report["politeness"]))
    stdout.flush()
    failed = [r for r in (*scrapy_runs, *fleet_runs) if not r.ok]
    publish_ok = report.get("publish", {}).get("exact", True)
    return 1 if failed or not polite_ok or not publish_ok else 0


if __name__ == "__main__":
    sys.exit(main())
