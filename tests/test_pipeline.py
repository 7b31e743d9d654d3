"""Integration: publish/dedup, competing workers, indexer, search, status, DLQ and replay.

Everything is real: nats-server -js, HTTP servers on loopback, the SQLite sink, and the
`fleet` CLI as a subprocess where the contract is the CLI.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StreamConfig

from fleet import worker as worker_role
from fleet.admin import replay_dead_letters
from fleet.errors import ConfigError
from fleet.messages import Page, UrlTask, fit_page, page_decoder, url_task_decoder
from fleet.nats.server import find_nats_server
from fleet.nats.session import connect
from fleet.nats.streams import ensure_topology
from fleet.scrape.fetch import Fetcher
from fleet.scrape.scraper import Scraper
from fleet.settings import Settings
from tests.conftest import Roles, fleet_cli, wait_for
from tests.pipeline_helpers import (
    cli,
    cli_json,
    drained,
    get_status,
    indexed_urls,
    write_urls,
)
from tests.site import LoopbackSite


def test_publish_reports_invalid_and_dedups(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "# a comment\n"
        f"{site.url('/page/1')}\n"
        "\n"
        f"{site.url('/page/2')}#section\n"
        "ftp://example.com/file\n"
        f"{site.url('/page/2')}\n"  # same as line 4 after normalisation
        f"HTTP://{site.hostport.upper()}/page/1\n"
        "not a url\n"
    )
    first = cli(settings, "publish", str(urls), "--json")
    assert first.returncode == 2, first.stderr
    assert json.loads(first.stdout) == {"published": 2, "duplicates": 2, "invalid": 2}
    assert f"{urls}:5: scheme 'ftp' not supported" in first.stderr
    assert f"{urls}:8:" in first.stderr

    # A re-run within the dedup window publishes nothing twice (JetStream Nats-Msg-Id).
    again = cli(settings, "publish", str(urls), "--json")
    assert json.loads(again.stdout) == {"published": 0, "duplicates": 4, "invalid": 2}

    st = asyncio.run(get_status(settings))
    assert st["streams"]["urls"]["messages"] == 2
    assert st["consumers"]["workers"]["pending"] == 2


def test_publish_from_stdin_exit_zero_when_all_valid(
    settings: Settings, site: LoopbackSite
) -> None:
    out = cli(
        settings, "publish", "-", "--json", stdin=f"{site.url('/page/3')}\n{site.url('/page/4')}\n"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["published"] == 2


def test_publish_is_pipelined_for_many_urls(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    path = write_urls(tmp_path / "many.txt", [site.url(f"/page/{n}?v={n}") for n in range(3000)])
    counts = cli_json(settings, "publish", str(path))
    assert counts == {"published": 3000, "duplicates": 0, "invalid": 0}


async def test_competing_workers_share_the_queue(settings: Settings, site: LoopbackSite) -> None:
    settings = settings.replace(worker_concurrency=4)
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await ensure_topology(js, settings)
    for n in range(40):
        await js.publish(
            settings.urls_subject,
            json.dumps(
                {"url": site.url(f"/slow/{n}?s=0.05"), "id": f"id{n}", "published_at": 0}
            ).encode(),
            headers={"Nats-Msg-Id": f"id{n}"},
        )
    stop = asyncio.Event()
    workers = []
    fetchers = []
    for _ in range(2):
        wnc = await connect(settings, name="w")
        fetcher = Fetcher(settings)
        fetchers.append((wnc, fetcher))
        w = worker_role.Worker(
            wnc.jetstream(),
            Scraper(fetcher, settings),
            settings,
            max_payload=wnc.max_payload,
        )
        workers.append(w)
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]

    async def all_done() -> bool:
        return sum(w.processed for w in workers) == 40

    await wait_for(all_done, timeout=30)
    stop.set()
    await asyncio.gather(*tasks)
    for wnc, fetcher in fetchers:
        await fetcher.close()
        await wnc.close()
    counts = [w.processed for w in workers]
    assert all(c > 5 for c in counts), counts  # both competed for the work
    info = await js.stream_info(settings.results_stream)
    assert info.state.messages == 40
    await nc.close()


async def test_worker_and_indexer_processes_then_search_and_status(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    urls = [site.url(f"/page/{n}") for n in range(30)] + [site.url("/plain")]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
    roles.start("worker", "--concurrency", "8")
    roles.start("indexer")

    async def all_indexed() -> bool:
        return len(indexed_urls(settings)) == len(urls)

    await wait_for(all_indexed, timeout=60)
    await wait_for(lambda: drained(settings), timeout=30)
    assert set(indexed_urls(settings).values()) == {1}

    hits = cli_json(settings, "search", "unique7")
    assert hits[0]["url"] == site.url("/page/7")
    assert hits[0]["title"] == "Page 7"
    assert "unique7" in hits[0]["snippet"]
    limited = cli_json(settings, "search", "alpha", "--limit", "3")
    assert len(limited) == 3

    st = cli_json(settings, "status")
    assert st["consumers"]["workers"]["pending"] == 0
    assert st["consumers"]["workers"]["ack_pending"] == 0
    assert st["consumers"]["indexer"]["pending"] == 0
    assert st["dead_letters"] == 0
    assert {"pending", "ack_pending", "redelivered"} <= set(st["consumers"]["indexer"])

    # Graceful SIGTERM: both roles exit 0 promptly.
    for proc in roles.procs:
        proc.terminate()
    for proc in roles.procs:
        assert proc.wait(20) == 0


async def test_always_500_fetched_max_deliver_times_then_dead_lettered_and_replayed(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    bad, gone = site.url("/status/500"), site.url("/status/404")
    cli_json(
        settings, "publish", str(write_urls(tmp_path / "u.txt", [bad, gone, site.url("/page/1")]))
    )
    roles.start("worker")
    roles.start("indexer")

    async def two_dead() -> bool:
        return bool((await get_status(settings))["dead_letters"] == 2)

    await wait_for(two_dead, timeout=60)
    await wait_for(lambda: drained(settings), timeout=30)
    assert site.hits["/status/500"] == settings.max_deliver
    assert site.hits["/status/404"] == 1  # permanent: no retry

    letters = {d["url"]: d for d in cli_json(settings, "dlq", "list")}
    assert letters[bad]["reason"] == "http_500"
    assert letters[bad]["attempts"] == settings.max_deliver
    assert letters[gone]["reason"] == "http_404" and letters[gone]["attempts"] == 1
    assert list(indexed_urls(settings)) == [site.url("/page/1")]

    replay = cli_json(settings, "dlq", "replay", "--reason", "http_404")
    assert replay == {"replayed": 1}

    async def replayed_back() -> bool:
        return site.hits["/status/404"] == 2 and (await get_status(settings))["dead_letters"] == 2

    await wait_for(replayed_back, timeout=30)
    letters_after = cli_json(settings, "dlq", "list")
    assert sorted(d["url"] for d in letters_after) == sorted([bad, gone])


def test_fleet_run_all_in_one_with_private_server(site: LoopbackSite, tmp_path: Path) -> None:
    urls = [site.url(f"/page/{n}") for n in range(50)] + [
        site.url("/status/404"),
        site.url("/status/503"),  # transient: retried with delays, then dead-lettered
        "nope://x",
    ]
    path = write_urls(tmp_path / "urls.txt", urls)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_ALLOW_HOSTS=site.hostport,
        FLEET_SINK=f"sqlite:///{tmp_path / 'run.db'}",
        FLEET_BACKOFF_BASE_S="0.05",
        # The one loopback host is ours: no per-host limits (robots.txt is a 404 there).
        FLEET_HOST_RULES=f"{site.hostport} concurrency=0 delay_s=0",
    )
    out = subprocess.run(
        [*fleet_cli(), "run", str(path), "--workers", "2", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["published"] == 52
    assert summary["indexed"] == 50
    assert summary["dead_lettered"] == 2
    assert summary["invalid"] == 1
    assert site.hits["/status/503"] == 5  # FLEET_MAX_DELIVER default
    assert summary["seconds"] > 0 and summary["pages_per_s"] > 0
    assert "urls.txt:53:" in out.stderr

    search = subprocess.run(
        [*fleet_cli(), "search", "unique42", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(search.stdout)[0]["url"] == site.url("/page/42")


def test_nats_unreachable_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "FLEET_NATS_URL": "nats://127.0.0.1:1"}
    out = subprocess.run(
        [sys.executable, "-m", "fleet", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "nats://127.0.0.1:1" in lines[0] and "nats-server -js" in lines[0]


async def test_ensure_topology_is_idempotent_and_reports_drift(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_server)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    await ensure_topology(js, settings)  # second time: no error, no change
    # Mutable drift is corrected in place.
    await ensure_topology(js, settings.replace(ack_wait_s=9.0))
    info = await js.consumer_info(settings.urls_stream, "workers")
    assert info.config.ack_wait == 9.0
    # Immutable drift is reported with the fix.
    other = settings.replace(stream_prefix="OTHER")
    await js.add_stream(
        StreamConfig(name=other.urls_stream, subjects=["x.y"], retention=RetentionPolicy.LIMITS)
    )
    try:
        await ensure_topology(js, other)
        raise AssertionError("drift not reported")
    except ConfigError as exc:
        assert "OTHER_URLS" in str(exc) and "nats stream rm" in str(exc)
    await nc.close()


def test_fit_page_truncates_text_and_marks_it() -> None:
    page = Page(
        id="x",
        url="http://example.com/",
        final_url="http://example.com/",
        canonical_url="http://example.com/",
        status=200,
        content_type="text/html",
        text="é" * 600_000,  # 1.2 MB of UTF-8
        links=[f"http://example.com/{n}" for n in range(5000)],
    )
    data = fit_page(page, 500_000)
    assert len(data) <= 500_000
    fitted = page_decoder.decode(data)
    assert fitted.text_truncated and fitted.text and fitted.text.startswith("é")
    small = fit_page(msgspec.structs.replace(page, text="short", links=[]), 500_000)
    assert not page_decoder.decode(small).text_truncated


async def test_page_larger_than_max_payload_is_published_truncated(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    # 3 MB of text: under the body cap (5 MB) but over NATS max_payload (1 MB).
    big = site.url("/big?kb=3000")
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", [big])))
    roles.start("worker")
    roles.start("indexer")

    async def indexed() -> bool:
        return list(indexed_urls(settings)) == [big]

    await wait_for(indexed, timeout=60)
    nc = await nats.connect(settings.nats_server)
    raw = await nc.jetstream().get_msg(settings.results_stream, 1)
    await nc.close()
    page = page_decoder.decode(raw.data or b"")
    assert page.text_truncated and 0 < len(page.text) < 1024 * 1024
    assert (await get_status(settings))["dead_letters"] == 0


async def test_sigterm_naks_in_flight_urls_for_other_workers(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    # Long AckWait: if in-flight URLs were not nak'ed on SIGTERM they would sit in
    # ack_pending for 60 s; with the drain they are handed back at once.
    settings = settings.replace(ack_wait_s=60.0, drain_timeout_s=0.5)
    roles = Roles(settings)
    try:
        urls = [site.url(f"/slow/{n}?s=5") for n in range(6)]
        cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
        worker = roles.start("worker", "--concurrency", "6")

        async def all_in_flight() -> bool:
            return bool((await get_status(settings))["consumers"]["workers"]["ack_pending"] == 6)

        await wait_for(all_in_flight, timeout=30)
        worker.terminate()
        assert await asyncio.to_thread(worker.wait, 20) == 0
        # Handed back: another consumer gets all six at once, not after AckWait (60 s).
        nc = await nats.connect(settings.nats_server)
        sub = await nc.jetstream().pull_subscribe_bind("workers", settings.urls_stream)
        got: list[Msg] = []
        while len(got) < 6:
            got += await sub.fetch(6 - len(got), timeout=5)
        assert all(m.metadata.num_delivered == 2 for m in got)
        await nc.close()
    finally:
        roles.stop_all()


def test_publish_shows_a_progress_bar_on_a_tty(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    path = write_urls(tmp_path / "u.txt", [site.url(f"/page/{n}") for n in range(50)])
    leader, follower = pty.openpty()
    # A terminal has a size; tqdm draws nothing on a 0-column one.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, **settings.to_env()}
    proc = subprocess.run(
        [*fleet_cli(), "publish", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        timeout=60,
        check=False,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"50/50" in shown and b"url" in shown  # tqdm's bar, on the terminal only
    assert "published 50" in proc.stdout


def test_server_without_jetstream_is_one_clear_line(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [find_nats_server(), "-a", "127.0.0.1", "-p", "-1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        port = None
        for line in server.stderr:
            if "Listening for client connections on" in line:
                port = line.rsplit(":", 1)[1].strip()
            if "Server is ready" in line:
                break
        env = {**os.environ, "FLEET_NATS_URL": f"nats://user:secret@127.0.0.1:{port}"}
        for args in (["status"], ["publish", "-"]):
            out = subprocess.run(
                [*fleet_cli(), *args],
                env=env,
                input="",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 2, out.stderr
            assert out.stderr.count("\n") == 1, out.stderr
            assert "JetStream is not enabled" in out.stderr and "nats-server -js" in out.stderr
            assert "secret" not in out.stderr
    finally:
        server.terminate()
        server.wait(10)


async def test_dead_letter_keeps_trace_context_and_replay_restores_it(
    settings: Settings, site: LoopbackSite, roles: Roles
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await ensure_topology(js, settings)
    url = site.url("/status/404")
    task = UrlTask(url=url, id="u404", published_at=0.0)
    await js.publish(
        settings.urls_subject,
        msgspec.json.encode(task),
        headers={"Nats-Msg-Id": "u404", "traceparent": traceparent},
    )
    worker = roles.start("worker")

    async def dead() -> bool:
        return bool((await get_status(settings))["dead_letters"] == 1)

    await wait_for(dead, timeout=30)
    worker.terminate()
    assert await asyncio.to_thread(worker.wait, 20) == 0
    assert await replay_dead_letters(js, settings) == 1
    info = await js.stream_info(settings.urls_stream)
    replayed = await js.get_msg(settings.urls_stream, info.state.last_seq)
    assert replayed.headers is not None
    assert replayed.headers["traceparent"] == traceparent
    assert url_task_decoder.decode(replayed.data or b"").url == url
    await nc.close()
