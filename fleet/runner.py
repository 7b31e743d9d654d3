"""`fleet run`: the whole pipeline on one machine, until the list is done.

Starts a private nats-server when no NATS URL is configured, runs N worker processes and
one indexer process (separate processes, so extraction uses every core), publishes the
file, waits until the URLs work queue is empty (every URL indexed, dead-lettered or skipped;
URLs deferred for politeness are still in it, scheduled) and the indexer has acked every
result, then stops everything.

With ``autoscale`` (`fleet run --autoscale`), the supervisor's policy and its local backend
(`fleet/scaling/local.py`) start and stop the worker processes on the queue's lag instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from fleet.admin import dead_letter_counts, skipped_counts
from fleet.errors import TransientError
from fleet.nats.acks import FastAcks
from fleet.nats.frontier import Frontier
from fleet.nats.server import EmbeddedNats
from fleet.nats.session import nats_session
from fleet.nats.streams import INDEXER_CONSUMER
from fleet.publisher import Progress, Publisher
from fleet.scaling.local import LocalBackend
from fleet.settings import Settings
from fleet.spawn import RoleProcess, spawn_role, stop_all
from fleet.supervisor import JetStreamLag, Policy, Supervisor
from fleet.telemetry import Telemetry

if TYPE_CHECKING:
    # fleet.crawl brings the whole scraping stack (lexbor, the fetcher, the render pool):
    # imported only by a run that crawls, so a URL-list coordinator starts ~0.1 s sooner.
    from fleet.crawl import CrawlOptions

log = logging.getLogger(__name__)

POLL_S = 0.2


class RunTimeout(TransientError):
    """`fleet run` was not done after ``timeout_s``; nothing is lost, a re-run resumes."""

    reason = "run_timeout"

    def __init__(self, message: str, *, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


class RoleCrashed(TransientError):
    """Role child processes (``roles``, described) exited during `fleet run`.

    Transient: un-acked URLs stay in their stream, so a re-run resumes; the roles' own
    stderr says why they exited.
    """

    reason = "role_crashed"

    def __init__(self, message: str, *, roles: list[str]) -> None:
        super().__init__(message)
        self.roles = roles


@dataclasses.dataclass
class RunSummary:
    """What a `fleet run` did; ``completed`` is False when it stopped before the list was done.

    ``indexed`` counts the results the run added, minus those the indexer dead-lettered;
    ``dead_lettered`` counts the dead letters written during the run, in either stage.
    """

    published: int = 0
    duplicates: int = 0
    invalid: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    completed: bool = False
    # `fleet run --crawl`: the crawl's id and distinct in-scope URLs found.
    crawl: str | None = None
    discovered: int = 0
    unchanged: int = 0

    @property
    def pages_per_s(self) -> float:
        """Pages indexed per second of the run (0 before it has a duration)."""
        return round(self.indexed / self.seconds, 1) if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The summary `fleet run` prints (``seconds`` rounded to the millisecond)."""
        return {
            "published": self.published,
            "indexed": self.indexed,
            "dead_lettered": self.dead_lettered,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "skipped": dict(self.skipped),
            "seconds": round(self.seconds, 3),
            "pages_per_s": self.pages_per_s,
            **(
                {"crawl": self.crawl, "discovered": self.discovered, "unchanged": self.unchanged}
                if self.crawl
                else {}
            ),
        }


class RoleProcesses:
    """Child processes running `fleet worker` / `fleet indexer`, stopped together."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self.procs: list[RoleProcess] = []

    def spawn(self, role: str, *args: str) -> RoleProcess:
        """Start ``fleet <role> <args>`` with the run's environment, and keep it to stop later."""
        proc = spawn_role(role, args, env=self._env)
        self.procs.append(proc)
        return proc

    def crashed(self) -> list[str]:
        """``describe()`` of each child that exited with a non-zero code; empty while none has."""
        return [p.describe() for p in self.procs if p.crashed]

    def stop(self, grace_s: float) -> None:
        """SIGTERM them all, SIGKILL whichever still runs ``grace_s`` later; blocks until done."""
        stop_all(self.procs, grace_s)


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


async def _wait_done(
    js: JetStreamContext,
    settings: Settings,
    *,
    deadline: float,
    crashed: Callable[[], list[str]],
    also: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Until `_drained` (and ``also``); raises when a role process crashed or ``deadline``
    passed."""
    while not (await _drained(js, settings) and (also is None or await also())):
        if roles := crashed():
            raise RoleCrashed(f"role process(es) exited: {', '.join(roles)}", roles=roles)
        if time.monotonic() > deadline:
            raise RunTimeout(
                f"not done after {settings.run_timeout_s:.0f}s; raise FLEET_RUN_TIMEOUT_S "
                "or check `fleet status`",
                timeout_s=settings.run_timeout_s,
            )
        await asyncio.sleep(POLL_S)


@dataclasses.dataclass(frozen=True)
class _Input:
    """What a run feeds the pipeline: the file's lines, or a crawl."""

    lines: Iterable[tuple[int, str]]
    crawl: CrawlOptions | None
    on_invalid: Callable[[int, str], None]
    progress: Progress | None
    source: str | None
    telemetry: Telemetry


async def _feed(
    js: JetStreamContext,
    frontier: Frontier,
    settings: Settings,
    summary: RunSummary,
    feed: _Input,
    *,
    nc: NATS,
) -> Callable[[], Awaitable[bool]] | None:
    """Publish the file, or start the crawl; returns the crawl's "settled" check."""
    crawl = feed.crawl
    if crawl is None:
        async with FastAcks(nc, js) as acks:
            publisher = Publisher(
                acks, settings, headers_for=feed.telemetry.publish_headers(settings.urls_subject)
            )
            report = await publisher.publish_urls(
                feed.lines, on_invalid=feed.on_invalid, progress=feed.progress, source=feed.source
            )
        summary.published, summary.duplicates = report.published, report.duplicates
        summary.invalid = report.invalid
        return None
    from fleet.crawl import read_counts, start_crawl  # noqa: PLC0415 (see TYPE_CHECKING)

    spec = await start_crawl(frontier, crawl)
    summary.crawl = spec.id
    log.info("crawl %s started from %s", spec.id, ", ".join(spec.seeds))

    async def settled() -> bool:
        counts = await read_counts(frontier, spec.id)
        return counts.settled and counts.queued_total > 0

    return settled


async def _finish(
    js: JetStreamContext,
    frontier: Frontier,
    settings: Settings,
    summary: RunSummary,
    before: _Counts,
) -> None:
    """The summary's counts: what the streams hold now that they did not before."""
    after = await _counts(js, settings)
    new_dl = {k: v - before.dead_letters.get(k, 0) for k, v in after.dead_letters.items()}
    summary.dead_lettered = sum(new_dl.values())
    summary.indexed = after.results - before.results - new_dl.get("indexer", 0)
    summary.skipped = {
        reason: n - before.skipped.get(reason, 0)
        for reason, n in after.skipped.items()
        if n > before.skipped.get(reason, 0)
    }
    if summary.crawl is not None:
        await _crawl_summary(frontier, summary)
    summary.completed = True


async def _crawl_summary(frontier: Frontier, summary: RunSummary) -> None:
    from fleet.crawl import read_counts  # noqa: PLC0415 (see TYPE_CHECKING)

    assert summary.crawl is not None
    counts = await read_counts(frontier, summary.crawl)
    summary.published = counts.queued_total
    summary.discovered = counts.discovered
    summary.unchanged = counts.total("unchanged")


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
    crawl: CrawlOptions | None = None,
) -> RunSummary:
    """Run the file (or, with ``crawl``, a crawl from its seeds) through the pipeline.

    ``workers`` processes, or with ``autoscale`` between its min and max, chosen by the
    supervisor's policy every ``supervisor_interval_s`` (the workers then serve no metrics
    port). A crawl run ends when the crawl is settled: every URL it queued has its outcome
    and every page it fetched is indexed (or dead-lettered)."""
    feed = _Input(lines, crawl, on_invalid, progress, source, telemetry or Telemetry.disabled())
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
        async with nats_session(
            settings, name="fleet-run", publish_async_max_pending=2048
        ) as session:
            js = session.js
            try:
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
                frontier = Frontier(session.nc, js, settings)
                try:
                    also = await _feed(js, frontier, settings, summary, feed, nc=session.nc)
                    await _wait_done(
                        js,
                        settings,
                        deadline=started + settings.run_timeout_s,
                        crashed=lambda: children.crashed() + (scaler.crashed if scaler else []),
                        also=also,
                    )
                    summary.seconds = time.monotonic() - started
                    await _finish(js, frontier, settings, summary, before)
                finally:
                    await frontier.close()
            finally:
                if scaling is not None:
                    stop_scaling.set()
                    await scaling
                if scaler is not None:
                    await scaler.close()
    finally:
        # Blocking wait is fine here: nothing else runs on this loop any more.
        children.stop(settings.drain_timeout_s + 5)
        if server is not None:
            server.close()
    return summary
