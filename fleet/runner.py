"""`fleet run`: the whole pipeline on one machine, until the list is done.

Starts a private nats-server when no NATS URL is configured, runs N worker processes and
one indexer process (separate processes, so extraction uses every core), publishes the
file, waits until the URLs work queue is empty (every URL indexed, dead-lettered or skipped;
URLs deferred for politeness are still in it, scheduled) and the indexer has acked every
result, then stops everything.

With ``autoscale`` (`fleet run --autoscale`), the supervisor's policy and its local backend
(`fleet/scaling.py`) start and stop the worker processes on the queue's lag instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nats.js import JetStreamContext

from fleet.admin import dead_letter_counts, skipped_counts
from fleet.errors import FleetError
from fleet.nats.server import EmbeddedNats
from fleet.nats.session import connect
from fleet.nats.streams import INDEXER_CONSUMER, ensure_topology
from fleet.publisher import Progress, Publisher
from fleet.scaling.local import LocalBackend
from fleet.settings import Settings
from fleet.supervisor import JetStreamLag, Policy, Supervisor
from fleet.telemetry import Telemetry

log = logging.getLogger(__name__)

POLL_S = 0.2


class RunTimeout(FleetError):
    reason = "run_timeout"


class RoleCrashed(FleetError):
    reason = "role_crashed"


@dataclasses.dataclass
class RunSummary:
    published: int = 0
    duplicates: int = 0
    invalid: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    completed: bool = False

    @property
    def pages_per_s(self) -> float:
        return round(self.indexed / self.seconds, 1) if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "indexed": self.indexed,
            "dead_lettered": self.dead_lettered,
            "skipped": dict(self.skipped),
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
            "pages_per_s": self.pages_per_s,
        }


class RoleProcesses:
    """Child processes running `fleet worker` / `fleet indexer`, stopped with SIGTERM."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet", role, *args],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.procs.append((role, proc))
        return proc

    def crashed(self) -> list[str]:
        return [
            f"{role} (pid {p.pid}, exit {p.returncode})"
            for role, p in self.procs
            if p.poll() not in (None, 0)
        ]

    def stop(self, grace_s: float) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _drained(js: JetStreamContext, settings: Settings) -> bool:
    """Every URL handled by the workers and every result by the indexer.

    Read from stream state, which a publish ack has already updated, not from the
    consumers' num_pending: right after the publish acks a fresh consumer can still report
    nothing pending (seen: a run "done" 44 ms after publishing 52 URLs, none indexed)."""
    # The URLs stream is a work queue: a URL leaves it when acked, termed or reaped, and a
    # worker acks a URL only after its result is in the results stream.
    urls = await js.stream_info(settings.urls_stream)
    if urls.state.messages:
        return False
    results = await js.stream_info(settings.results_stream)
    indexer = await js.consumer_info(settings.results_stream, INDEXER_CONSUMER)
    acked = indexer.ack_floor.stream_seq if indexer.ack_floor else 0
    return (acked or 0) >= results.state.last_seq and not indexer.num_ack_pending


@dataclasses.dataclass(frozen=True)
class _Counts:
    results: int
    dead_letters: dict[str, int]
    skipped: dict[str, int]


async def _counts(js: JetStreamContext, settings: Settings) -> _Counts:
    results = await js.stream_info(settings.results_stream)
    return _Counts(
        results.state.last_seq,
        await dead_letter_counts(js, settings),
        await skipped_counts(js, settings),
    )


def _metrics_args(base_port: int, offset: int) -> tuple[str, ...]:
    return ("--metrics-port", str(base_port + offset)) if base_port else ()


async def run_pipeline(
    settings: Settings,
    lines: Iterable[tuple[int, str]],
    *,
    workers: int,
    base_env: Mapping[str, str],
    on_invalid: Callable[[int, str], None],
    progress: Progress | None = None,
    source: str | None = None,
    telemetry: Telemetry | None = None,
    autoscale: Policy | None = None,
) -> RunSummary:
    """Run the file through the pipeline. ``workers`` processes, or with ``autoscale``
    between its min and max, chosen by the supervisor's policy every
    ``supervisor_interval_s`` (the workers then serve no metrics port)."""
    telemetry = telemetry or Telemetry.disabled()
    server: EmbeddedNats | None = None
    if settings.nats_url is None:
        server = EmbeddedNats().start()
        settings = settings.replace(nats_url=server.url)
        log.info("started private nats-server at %s (store %s)", server.url, server.store_dir)
    children = RoleProcesses({**base_env, **settings.to_env()})
    scaler = (
        LocalBackend(
            {**base_env, **settings.to_env()}, stop_grace_s=settings.supervisor_stop_grace_s
        )
        if autoscale
        else None
    )
    stop_scaling = asyncio.Event()
    scaling: asyncio.Task[None] | None = None
    summary = RunSummary()
    started = time.monotonic()
    try:
        nc = await connect(settings, name="fleet-run")
        try:
            js = nc.jetstream(publish_async_max_pending=2048)
            await ensure_topology(js, settings)
            before = await _counts(js, settings)
            # One metrics port per child: the indexer's, then one per worker.
            port = settings.metrics_port
            children.spawn("indexer", *_metrics_args(port, 0))
            if scaler is not None and autoscale is not None:
                supervisor = Supervisor(
                    autoscale,
                    JetStreamLag(settings, js=js),
                    scaler,
                    interval_s=settings.supervisor_interval_s,
                )
                scaling = asyncio.create_task(supervisor.run(stop_scaling))
            else:
                for n in range(workers):
                    children.spawn("worker", *_metrics_args(port, 1 + n))
            publisher = Publisher(
                js, settings, headers_for=telemetry.publish_headers(settings.urls_subject)
            )
            report = await publisher.publish_urls(
                lines, on_invalid=on_invalid, progress=progress, source=source
            )
            summary.published, summary.duplicates = report.published, report.duplicates
            summary.invalid = report.invalid
            deadline = started + settings.run_timeout_s
            while not await _drained(js, settings):
                if crashed := children.crashed() + (scaler.crashed if scaler else []):
                    raise RoleCrashed(f"role process(es) exited: {', '.join(crashed)}")
                if time.monotonic() > deadline:
                    raise RunTimeout(
                        f"not done after {settings.run_timeout_s:.0f}s; raise FLEET_RUN_TIMEOUT_S "
                        "or check `fleet status`"
                    )
                await asyncio.sleep(POLL_S)
            summary.seconds = time.monotonic() - started
            after = await _counts(js, settings)
            new_dl = {k: v - before.dead_letters.get(k, 0) for k, v in after.dead_letters.items()}
            summary.dead_lettered = sum(new_dl.values())
            summary.indexed = after.results - before.results - new_dl.get("indexer", 0)
            summary.skipped = {
                reason: n - before.skipped.get(reason, 0)
                for reason, n in after.skipped.items()
                if n > before.skipped.get(reason, 0)
            }
            summary.completed = True
        finally:
            if scaling is not None:
                stop_scaling.set()
                await scaling
            if scaler is not None:
                await scaler.close()
            with contextlib.suppress(Exception):
                await nc.drain()
    finally:
        # Blocking wait is fine here: nothing else runs on this loop any more.
        children.stop(settings.drain_timeout_s + 5)
        if server is not None:
            server.close()
    return summary
