"""Supervisor scaling benchmark (local backend): ``python -m bench.scale`` / ``make bench-scale``.

1. Start a private nats-server, one ``fleet indexer`` (SQLite sink) and a slow site
   (``tests/fakes/site.py`` with ``--delay``, its own process): every page takes the delay
   to answer, so a worker's throughput is bound by its concurrency, not by the CPU, and
   adding workers adds throughput even on a 2-core machine.
2. Throughput per replica count: for n = 1 … max, n ``fleet worker`` processes (started by
   the local backend, warmed up) get a batch of fresh URLs; URLs/s = batch / time until the
   workers' consumer is empty.
3. Autoscaling: one worker, the supervisor's loop over the local backend, then a burst of
   URLs at once: time from the burst to max replicas, until the queue is drained, and from
   the drain back to min replicas.

Prints a table (and JSON with --json). Exit status 1 when a phase did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext

from fleet.nats.server import EmbeddedNats
from fleet.nats.streams import WORKERS_CONSUMER, ensure_topology
from fleet.publisher import Publisher
from fleet.scaling.local import LocalBackend
from fleet.settings import Settings
from fleet.supervisor import JetStreamLag, Policy, Supervisor

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def slow_site(delay_s: float) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.site", "--port", str(port), "--delay", str(delay_s)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the slow site did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def lag(js: JetStreamContext, settings: Settings) -> int:
    info = await js.consumer_info(settings.urls_stream, WORKERS_CONSUMER)
    return int((info.num_pending or 0) + (info.num_ack_pending or 0))


async def publish(js: JetStreamContext, settings: Settings, urls: Sequence[str]) -> None:
    report = await Publisher(js, settings).publish_urls(
        enumerate(urls, start=1), on_invalid=lambda n, r: None
    )
    if report.published != len(urls):
        raise RuntimeError(f"published {report.published} of {len(urls)}")


async def wait_drained(js: JetStreamContext, settings: Settings, timeout_s: float) -> None:
    started = time.monotonic()
    while await lag(js, settings) > 0:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"not drained within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)


async def throughput(
    js: JetStreamContext, settings: Settings, env: dict[str, str], site: str, args: Any
) -> list[dict[str, Any]]:
    rows = []
    backend = LocalBackend(env, stop_grace_s=settings.supervisor_stop_grace_s)
    try:
        for n in range(1, args.max + 1):
            await backend.scale_to(n)
            await asyncio.sleep(args.warmup)  # imports and NATS connections of new workers
            urls = [f"http://{site}/page/{n * 100_000 + i}" for i in range(args.urls_per_count)]
            started = time.monotonic()
            await publish(js, settings, urls)
            await wait_drained(js, settings, timeout_s=600)
            seconds = time.monotonic() - started  # publish included: the burst as a user sees it
            rows.append({"replicas": n, "urls": len(urls), "seconds": round(seconds, 2)})
            rows[-1]["urls_per_s"] = round(len(urls) / seconds, 1)
            rows[-1]["speedup"] = round(rows[-1]["urls_per_s"] / rows[0]["urls_per_s"], 2)
            log(f"{n} worker(s): {rows[-1]['urls_per_s']} URLs/s")
    finally:
        await backend.close()
    return rows


async def autoscale(
    js: JetStreamContext, settings: Settings, env: dict[str, str], site: str, args: Any
) -> dict[str, Any]:
    policy = Policy.from_settings(settings)
    backend = LocalBackend(env, stop_grace_s=settings.supervisor_stop_grace_s)
    source = JetStreamLag(settings, js=js)
    sup = Supervisor(policy, source, backend, interval_s=settings.supervisor_interval_s)
    stop = asyncio.Event()
    loop = asyncio.create_task(sup.run(stop))
    try:
        while len(await backend.replicas()) != policy.min_replicas:
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.warmup)
        urls = [f"http://{site}/page/{900_000 + i}" for i in range(args.burst)]
        t0 = time.monotonic()
        await publish(js, settings, urls)
        to_max = drained = to_min = None
        while time.monotonic() - t0 < 600:
            n = len(await backend.replicas())
            t = time.monotonic() - t0
            if to_max is None and n == policy.max_replicas:
                to_max = t
            if drained is None and await lag(js, settings) == 0:
                drained = t
            if drained is not None and n == policy.min_replicas:
                to_min = t - drained
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await loop
        await backend.close()
    if to_max is None or drained is None or to_min is None:
        raise RuntimeError(f"autoscale phase incomplete: {to_max=}, {drained=}, {to_min=}")
    return {
        "burst": args.burst,
        "policy": {
            "min": policy.min_replicas,
            "max": policy.max_replicas,
            "target_lag": policy.target_lag,
            "cooldown_s": policy.cooldown_s,
            "interval_s": settings.supervisor_interval_s,
        },
        "burst_to_max_s": round(to_max, 2),
        "burst_to_drained_s": round(drained, 2),
        "drained_to_min_s": round(to_min, 2),
        "urls_per_s": round(args.burst / drained, 1),
    }


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = EmbeddedNats(store_dir=str(workdir / "nats")).start()
    indexer: subprocess.Popen[bytes] | None = None
    try:
        with slow_site(args.delay) as site:
            settings = Settings(
                nats_url=server.url,
                sink=f"sqlite:///{workdir / 'bench.db'}",
                allow_hosts=(site,),
                render="never",
                worker_concurrency=args.concurrency,
                # One loopback host, ours: no per-host limits (politeness is bench/polite.py).
                host_concurrency=0,
                host_delay_s=0.0,
                supervisor_min=1,
                supervisor_max=args.max,
                supervisor_target_lag=args.target_lag,
                supervisor_cooldown_s=args.cooldown,
                supervisor_interval_s=args.interval,
                supervisor_stop_grace_s=30.0,
                log_level="WARNING",
            )
            env = {**os.environ, **settings.to_env()}
            indexer = subprocess.Popen(
                [sys.executable, "-m", "fleet", "indexer"], env=env, stdin=subprocess.DEVNULL
            )
            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream(publish_async_max_pending=2048)
                await ensure_topology(js, settings)
                log(f"throughput at 1..{args.max} workers, {args.urls_per_count} URLs each")
                rows = await throughput(js, settings, env, site, args)
                log(f"autoscaling: burst of {args.burst} URLs")
                scaled = await autoscale(js, settings, env, site, args)
            finally:
                await nc.drain()
    finally:
        if indexer is not None:
            indexer.terminate()
            indexer.wait(30)
        server.close()
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "backend": "local (fleet worker subprocesses)",
        "site_delay_s": args.delay,
        "worker_concurrency": args.concurrency,
        "throughput": rows,
        "autoscale": scaled,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"backend: {result['backend']}; site delay {result['site_delay_s']}s per page, "
        f"worker concurrency {result['worker_concurrency']}; {result['machine']['cpus']} CPUs",
        "",
        "| workers | URLs | seconds | URLs/s | speed-up |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["throughput"]:
        lines.append(
            f"| {row['replicas']} | {row['urls']} | {row['seconds']} | {row['urls_per_s']} "
            f"| {row['speedup']}x |"
        )
    a = result["autoscale"]
    p = a["policy"]
    lines += [
        "",
        f"autoscale (min {p['min']}, max {p['max']}, target lag {p['target_lag']}, "
        f"cooldown {p['cooldown_s']:g}s, interval {p['interval_s']:g}s), burst of {a['burst']}:",
        "",
        "| burst → max replicas | burst → drained | drained → min replicas | URLs/s |",
        "|---:|---:|---:|---:|",
        f"| {a['burst_to_max_s']} s | {a['burst_to_drained_s']} s | {a['drained_to_min_s']} s "
        f"| {a['urls_per_s']} |",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max", type=int, default=4, help="most workers (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="per worker (default 8)")
    parser.add_argument("--delay", type=float, default=0.2, help="site seconds per page")
    parser.add_argument("--urls-per-count", type=int, default=600)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--target-lag", type=int, default=250)
    parser.add_argument("--cooldown", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds for new workers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-scale-"))
    try:
        result = asyncio.run(bench(args, workdir))
    except RuntimeError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
