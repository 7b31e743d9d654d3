"""Helpers shared by the integration and fault tests (real NATS, real sinks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats

from fleet.admin import status
from fleet.crawl import crawl_status
from fleet.messages import (
    DeadLetter,
    Page,
    UrlTask,
    dead_letter_encoder,
    page_decoder,
    url_task_encoder,
)
from fleet.nats.frontier import Frontier
from fleet.settings import Settings
from fleet.sinks import open_sink
from fleet.telemetry import Telemetry
from fleet.urls import normalize_url, url_id
from tests.conftest import fleet_cli, wait_for


async def get_status(settings: Settings) -> dict[str, Any]:
    nc = await nats.connect(servers=list(settings.nats_servers))
    try:
        return await status(nc.jetstream(), settings)
    finally:
        await nc.close()


async def drained(settings: Settings) -> bool:
    st = await get_status(settings)
    views = st["consumers"].values()
    return all(v and v["pending"] == 0 and v["ack_pending"] == 0 for v in views)


def sqlite_path(settings: Settings) -> Path:
    return Path(settings.sink.removeprefix("sqlite:///"))


def indexed_urls(settings: Settings) -> dict[str, int]:
    """url → number of rows holding it (must be 1: indexed exactly once)."""
    path = sqlite_path(settings)
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT url, COUNT(*) FROM pages GROUP BY url").fetchall()
        except sqlite3.OperationalError:
            return {}
    return {url: n for url, n in rows}


def cli(
    settings: Settings,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **settings.to_env(), **(env or {})}
    return subprocess.run(
        [*fleet_cli(), *args],
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_json(settings: Settings, *args: str) -> Any:
    out = cli(settings, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def write_urls(path: Path, urls: list[str]) -> Path:
    path.write_text("\n".join(urls) + "\n")
    return path


async def result_pages(settings: Settings) -> dict[str, Page]:
    """Every result in the results stream, by URL (the indexer does not keep via_reason)."""
    nc = await nats.connect(servers=list(settings.nats_servers))
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.results_stream)
        out: dict[str, Page] = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            raw = await js.get_msg(settings.results_stream, seq)
            page = page_decoder.decode(raw.data or b"")
            out[page.url] = page
        return out
    finally:
        await nc.close()


async def wait_indexed(settings: Settings, urls: list[str], timeout: float = 90) -> None:
    async def done() -> bool:
        return len(indexed_urls(settings)) == len(urls) and await drained(settings)

    await wait_for(done, timeout=timeout, interval=0.2)
    assert set(indexed_urls(settings).values()) == {1}


async def crawl_view(settings: Settings, crawl_id: str) -> dict[str, Any]:
    """`fleet crawl status --json` of one crawl, read in-process (cheap to poll)."""
    nc = await nats.connect(settings.nats_server)
    frontier = Frontier(nc, nc.jetstream(), settings)
    try:
        return await crawl_status(frontier, crawl_id)
    finally:
        await frontier.close()
        await nc.close()


async def wait_crawl_settled(
    settings: Settings, crawl_id: str, timeout: float = 120
) -> dict[str, Any]:
    """Poll until the crawl has settled (every URL has its outcome, pages indexed)."""
    view: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal view
        view = await crawl_view(settings, crawl_id)
        return bool(view["settled"]) and await drained(settings)

    await wait_for(settled, timeout=timeout, interval=0.2)
    return view


def start_crawl_cli(settings: Settings, *args: str) -> str:
    """`fleet crawl start ARGS --json` → the crawl id."""
    out = cli_json(settings, "crawl", "start", *args)
    return str(out["crawl"])


def sample_page(
    path: str, *, title: str, text: str, host: str = "example.com", lang: str = "en"
) -> Page:
    """A Page as a worker would publish it (for seeding a sink directly)."""
    url = normalize_url(f"https://{host}/{path}")
    return Page(
        id=url_id(url),
        url=url,
        final_url=url,
        canonical_url=url,
        status=200,
        content_type="text/html",
        title=title,
        description=f"about {title}",
        headings=[title, "Second heading"],
        text=text,
        lang=lang,
        links=[f"https://{host}/{path}/next", f"https://{host}/other"],
        content_hash=f"hash-{path}",
        fetched_at=1_700_000_000.0,
    )


async def index_pages(settings: Settings, pages: list[Page]) -> None:
    """Write pages to the settings' sink, as the indexer does."""
    store = open_sink(settings)
    try:
        await store.open()
        assert await store.upsert(pages) == []
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def running_serve(
    settings: Settings, telemetry: Telemetry | None = None
) -> AsyncIterator[str]:
    """`fleet serve` in this event loop on a free loopback port; yields its base URL."""
    from fleet.serve.app import serve  # noqa: PLC0415 - only the serve tests need it

    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            # Its NATS drain is bounded (then the connection is closed): well inside the
            # 30 s this waits for the exit below, even when a drain hangs on a loaded machine.
            settings.replace(api_port=0, drain_timeout_s=min(settings.drain_timeout_s, 5.0)),
            stop,
            telemetry or Telemetry.disabled("serve"),
            ready=ready.set_result,
        )
    )
    waiting: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiting, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    assert ready in done, "fleet serve did not start within 30 s"
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def put_dead_letter(settings: Settings, url: str, reason: str) -> None:
    """A dead letter exactly as a worker writes one (stage worker, original payload)."""
    task = UrlTask(url=url, id=url_id(url), published_at=time.time())
    letter = DeadLetter(
        url=url,
        id=task.id,
        stage="worker",
        reason=reason,
        error=f"HTTP {reason.removeprefix('http_')} from {url}",
        attempts=1,
        failed_at=time.time(),
        payload=url_task_encoder.encode(task),
    )
    nc = await nats.connect(settings.nats_server)
    try:
        await nc.jetstream().publish(
            f"{settings.dlq_subject}.worker", dead_letter_encoder.encode(letter)
        )
    finally:
        await nc.close()
