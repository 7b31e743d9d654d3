"""Politeness of the whole fleet, measured at the server.

Real nats-server, real `fleet worker` processes (through `fleet run --workers N` or the
Roles helper), and loopback hosts (tests/site.py PoliteSite, one port each) that log the
start and end of every request and serve the robots.txt the test gives them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from fleet.nats.hosts import KvRobotsCache, robots_bucket
from fleet.settings import Settings
from tests.conftest import Roles, wait_for
from tests.pipeline_helpers import cli, cli_json, get_status, indexed_urls, write_urls
from tests.site import PoliteSite, Request, max_starts_in_window


@pytest.fixture
def hosts() -> Iterator[list[PoliteSite]]:
    """Four loopback hosts (four ports: four origins)."""
    sites = [PoliteSite() for _ in range(4)]
    for s in sites:
        s.__enter__()
    try:
        yield sites
    finally:
        for s in sites:
            s.__exit__()


def _polite(settings: Settings, sites: list[PoliteSite], **overrides: Any) -> Settings:
    """The test settings with real per-host limits (conftest turns them off)."""
    base = {
        "allow_hosts": tuple(s.hostport for s in sites),
        "host_concurrency": 2,
        "host_delay_s": 0.0,
        "render": "never",
    }
    return settings.replace(**{**base, **overrides})


def _run(settings: Settings, path: Path, urls: list[str], workers: int = 2) -> dict[str, Any]:
    """`fleet run --json` on the test's nats-server; the summary, with the run's log."""
    out = cli(settings, "run", str(write_urls(path, urls)), "--workers", str(workers), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary: dict[str, Any] = json.loads(out.stdout)
    summary["log"] = out.stderr
    return summary


def _gaps(requests: list[Request]) -> list[float]:
    starts = sorted(r.start for r in requests)
    return [b - a for a, b in itertools.pairwise(starts)]


def test_robots_disallow_allow_and_404_fetched_once_for_the_fleet(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    ruled, bare = hosts[0], hosts[1]
    ruled.robots = (
        200,
        "User-agent: fleet\nDisallow: /private\nAllow: /private/ok\n\n"
        "User-agent: *\nDisallow: /\n\nSitemap: http://example.org/sitemap.xml\n",
    )
    s = _polite(settings, hosts, host_concurrency=0)
    urls = [
        *(ruled.url(f"/page/{n}") for n in range(6)),
        ruled.url("/private/secret"),
        ruled.url("/private/other"),
        ruled.url("/private/ok/1"),
        *(bare.url(f"/page/{n}") for n in range(6)),  # robots.txt is a 404: all allowed
    ]
    summary = _run(s, tmp_path / "u.txt", urls, workers=4)
    assert summary["indexed"] == 13 and summary["dead_lettered"] == 0
    assert summary["skipped"] == {"robots": 2}
    # One robots.txt fetch per host for four worker processes.
    assert len(ruled.robots_hits()) == 1 and len(bare.robots_hits()) == 1
    assert not [r for r in ruled.pages() if r.path.startswith("/private/s")]
    assert not [r for r in ruled.pages() if r.path.startswith("/private/other")]

    listed = cli_json(s, "skipped", "list")
    assert sorted(r["url"] for r in listed) == [
        ruled.url("/private/other"),
        ruled.url("/private/secret"),
    ]
    assert {r["reason"] for r in listed} == {"robots"}
    assert "robots.txt" in listed[0]["detail"]
    status = cli_json(s, "status")
    assert status["skipped"] == {"robots": 2} and status["dead_letters"] == 0

    async def sitemaps() -> list[str]:
        nc = await nats.connect(s.nats_server)
        try:
            js = nc.jetstream()
            cache = KvRobotsCache(js, await robots_bucket(js, s), s.robots_bucket)
            entry = await cache.get(f"http://{ruled.hostport}")
            assert entry is not None and entry.status == "ok"
            return entry.sitemaps
        finally:
            await nc.close()

    assert asyncio.run(sitemaps()) == ["http://example.org/sitemap.xml"]


def test_crawl_delay_and_concurrency_hold_across_four_workers(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    """4 worker processes x 32 slots: the limits are the fleet's, not each process's."""
    delayed, slow = hosts[0], hosts[1]
    delayed.robots = (200, "User-agent: *\nCrawl-delay: 0.5\n")
    slow.page_s = 0.4  # concurrency is what limits this one
    s = _polite(settings, hosts, worker_concurrency=32, host_concurrency=2)
    urls = [delayed.url(f"/d/{n}") for n in range(10)] + [slow.url(f"/s/{n}") for n in range(16)]
    summary = _run(s, tmp_path / "u.txt", urls, workers=4)
    assert summary["indexed"] == 26 and summary["dead_lettered"] == 0

    requests = delayed.robots_hits() + delayed.pages()  # robots.txt is a request too
    assert len(delayed.pages()) == 10
    assert max_starts_in_window(requests, 1.0) <= 3  # 2, +1 for the window's edges
    # Granted 0.5 s apart; a busy worker's event loop can send one a little late, so
    # the server may see some gaps a little shorter (the windows above are the contract).
    assert min(_gaps(delayed.pages())) >= 0.35, _gaps(delayed.pages())
    assert delayed.max_in_flight <= 2
    # Slow pages, no delay: at most FLEET_HOST_CONCURRENCY in flight, and that many used.
    assert slow.max_in_flight == 2


def test_unreachable_robots_then_recovery_urls_wait_never_dead_lettered(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    site = hosts[0]
    site.robots_queue = [(500, "down"), (503, "still down")]
    site.robots = (200, "User-agent: *\nDisallow: /private\n")
    # One delivery allowed: a single politeness nak would dead-letter the URL.
    s = _polite(settings, hosts, robots_retry_s=0.5, max_deliver=1)
    urls = [site.url(f"/page/{n}") for n in range(5)] + [site.url("/private/x")]
    summary = _run(s, tmp_path / "u.txt", urls)
    assert summary["indexed"] == 5 and summary["dead_lettered"] == 0
    assert summary["skipped"] == {"robots": 1}
    robots = sorted(site.robots_hits(), key=lambda r: r.start)
    assert [r.status for r in robots] == [500, 503, 200]
    # Nothing was fetched while robots.txt was unreachable.
    assert min(r.start for r in site.pages()) >= robots[-1].start


def test_robots_redirect_oversize_and_capped_crawl_delay(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    moved, huge, greedy = hosts[0], hosts[1], hosts[2]
    moved.robots_redirect = "/robots-real.txt"
    moved.robots = (200, "User-agent: *\nDisallow: /private\n")
    padding = "# filler line\n" * (600 * 1024 // 14)
    huge.robots = (200, "User-agent: *\nDisallow: /private\n" + padding + "Disallow: /late\n")
    greedy.robots = (200, "User-agent: *\nCrawl-delay: 3600\n")
    s = _polite(settings, hosts, host_concurrency=0, host_delay_max_s=0.3)
    urls = [
        moved.url("/page/1"),
        moved.url("/private/1"),
        huge.url("/page/1"),
        huge.url("/private/1"),
        huge.url("/late/1"),  # its rule is past the 500 KiB that are read
        *(greedy.url(f"/page/{n}") for n in range(4)),
    ]
    summary = _run(s, tmp_path / "u.txt", urls)
    assert summary["indexed"] == 7 and summary["skipped"] == {"robots": 2}
    assert [r.path for r in moved.robots_hits()] == ["/robots.txt", "/robots-real.txt"]
    assert {r.path for r in huge.pages()} == {"/page/1", "/late/1"}
    # An hour asked for, FLEET_HOST_DELAY_MAX_S given, and said so.
    assert min(_gaps(greedy.pages())) >= 0.2  # 0.3, less a busy loop's lateness
    assert "asks for a delay of 3600s; capped at 0.3s" in summary["log"]


def test_retry_after_pauses_the_host_for_the_whole_fleet(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    site, other = hosts[0], hosts[1]
    site.answers = [(429, {"Retry-After": "2"})]
    s = _polite(settings, hosts, host_delay_s=0.1, host_concurrency=2)
    urls = [site.url(f"/page/{n}") for n in range(8)] + [other.url(f"/o/{n}") for n in range(40)]
    summary = _run(s, tmp_path / "u.txt", urls, workers=3)
    assert summary["indexed"] == 48 and summary["dead_lettered"] == 0
    pages = site.pages()
    throttled = next(r for r in pages if r.status == 429)
    after = [r for r in pages if r.start > throttled.end]
    assert len(after) >= 7  # the 429'd URL itself is retried after Retry-After too
    assert min(r.start for r in after) >= throttled.end + 1.8
    # The other host was not paused: it kept its 0.1 s pace through the pause.
    during = [r for r in other.pages() if throttled.end < r.start < throttled.end + 1.8]
    assert len(during) >= 8, len(during)


async def test_a_killed_workers_slot_comes_back_when_its_lease_expires(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    site = hosts[0]
    # Lease = fetch deadline (2 s) + 2 s margin (render never: no render deadline).
    s = _polite(settings, hosts, host_concurrency=1, fetch_timeout_s=2.0, ack_wait_s=30.0)
    roles = Roles(s)
    try:
        site.set_hold(True)
        cli_json(s, "publish", str(write_urls(tmp_path / "a.txt", [site.url("/hold/1")])))
        victim = roles.start("worker", "--concurrency", "4")

        async def holding() -> bool:
            return site.in_flight == 1

        await wait_for(holding, timeout=30)
        victim.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 10)
        held = site.in_flight_since()
        site.set_hold(False)
        cli_json(s, "publish", str(write_urls(tmp_path / "b.txt", [site.url("/after/1")])))
        roles.start("worker", "--concurrency", "4")
        roles.start("indexer")

        async def after_done() -> bool:
            return site.url("/after/1") in indexed_urls(s)

        await wait_for(after_done, timeout=30)
        first_after = min(r.start for r in site.pages() if r.path == "/after/1")
        # Not before the dead worker's lease ran out, and not much later either.
        assert held + 3.7 <= first_after <= held + 4.0 + 5.0, (held, first_after)
    finally:
        roles.stop_all()


def test_waiting_urls_do_not_hold_up_other_hosts(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    """20 URLs on a 2 req/s host ahead of 500 on an unlimited one, in one queue."""
    slow, fast = hosts[0], hosts[1]
    rules = f"{slow.hostport} delay_s=0.5; {fast.hostport} concurrency=0 delay_s=0"
    s = _polite(settings, hosts, host_rules=rules, worker_concurrency=32)
    alone = _run(s, tmp_path / "a.txt", [fast.url(f"/alone/{n}") for n in range(500)])
    assert alone["indexed"] == 500
    alone_pages = fast.pages()
    alone_s = max(r.end for r in alone_pages) - min(r.start for r in alone_pages)

    mixed = [slow.url(f"/slow/{n}") for n in range(20)] + [
        fast.url(f"/mixed/{n}") for n in range(500)
    ]
    summary = _run(s, tmp_path / "m.txt", mixed)
    assert summary["indexed"] == 520 and summary["dead_lettered"] == 0
    fast_mixed = [r for r in fast.pages() if r.path.startswith("/mixed/")]
    mixed_s = max(r.end for r in fast_mixed) - min(r.start for r in fast_mixed)
    print(f"fast host alone {alone_s:.2f}s, behind the slow one {mixed_s:.2f}s")
    assert mixed_s <= 1.5 * alone_s + 1.0, (mixed_s, alone_s)
    assert min(_gaps(slow.pages())) >= 0.35  # 0.5, less a busy loop's lateness


def test_held_urls_are_never_dead_lettered_parked_or_deferred(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    """One delivery allowed, a few parked per worker, waits past the parking horizon: every
    URL waits its turn (parked, or deferred through the stream) and none is lost."""
    site = hosts[0]
    s = _polite(
        settings,
        hosts,
        max_deliver=1,
        host_delay_s=0.25,
        worker_parked_max=2,
        worker_park_max_s=0.5,
    )
    urls = [site.url(f"/page/{n}") for n in range(12)]
    summary = _run(s, tmp_path / "u.txt", urls)
    assert summary["indexed"] == 12 and summary["dead_lettered"] == 0
    assert min(_gaps(site.pages())) >= 0.15  # 0.25, less a busy loop's lateness
    st = asyncio.run(get_status(s))
    # Deferred URLs came back as new messages: the stream saw more than the 12 published.
    assert st["streams"]["urls"]["last_seq"] > 12
    assert st["deferred"] == 0 and st["streams"]["urls"]["messages"] == 0


async def test_sigterm_hands_parked_urls_back_without_costing_an_attempt(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    site = hosts[0]
    s = _polite(settings, hosts, max_deliver=1, host_delay_s=1.0, ack_wait_s=30.0)
    roles = Roles(s)
    try:
        urls = [site.url(f"/page/{n}") for n in range(5)]
        cli_json(s, "publish", str(write_urls(tmp_path / "u.txt", urls)))
        first = roles.start("worker", "--concurrency", "8")

        async def one_fetched_rest_parked() -> bool:
            st = await get_status(s)
            return len(site.pages()) >= 1 and st["consumers"]["workers"]["ack_pending"] >= 3

        await wait_for(one_fetched_rest_parked, timeout=30)
        first.terminate()
        assert await asyncio.to_thread(first.wait, 20) == 0
        roles.start("worker", "--concurrency", "8")
        roles.start("indexer")

        async def all_indexed() -> bool:
            return len(indexed_urls(s)) == len(urls)

        await wait_for(all_indexed, timeout=60)
        st = await get_status(s)
        assert st["dead_letters"] == 0
    finally:
        roles.stop_all()


async def test_a_parked_copy_settled_by_another_delivery_is_not_handed_back(
    settings: Settings, hosts: list[PoliteSite], tmp_path: Path
) -> None:
    # After a consumer leader change the new leader can deliver a parked URL again, to
    # another worker, which settles it: the parked copy must not queue it a second time.
    site = hosts[0]
    s = _polite(settings, hosts, host_delay_s=3.0, ack_wait_s=30.0)
    roles = Roles(s)
    log = tmp_path / "worker.log"
    try:
        urls = [site.url(f"/page/{n}") for n in range(4)]
        cli_json(s, "publish", str(write_urls(tmp_path / "u.txt", urls)))
        first = roles.start("worker", "--concurrency", "8", log=log)

        async def one_fetched_rest_parked() -> bool:
            st = await get_status(s)
            return len(site.pages()) >= 1 and st["consumers"]["workers"]["ack_pending"] >= 3

        await wait_for(one_fetched_rest_parked, timeout=30)
        nc = await nats.connect(servers=list(s.nats_servers))
        try:
            # The last URL (parked behind two others, 6 s away) settled elsewhere: gone.
            assert await nc.jetstream().delete_msg(s.urls_stream, len(urls))
        finally:
            await nc.close()
        first.terminate()
        assert await asyncio.to_thread(first.wait, 20) == 0
        assert "dropping a parked copy of " + urls[-1] in log.read_text()
        roles.start("worker", "--concurrency", "8")
        roles.start("indexer")

        async def the_rest_indexed() -> bool:
            return len(indexed_urls(s)) == len(urls) - 1

        await wait_for(the_rest_indexed, timeout=60)
        st = await get_status(s)
        assert st["streams"]["urls"]["messages"] == 0 and st["deferred"] == 0
        assert "/page/3" not in {r.path for r in site.pages()}
    finally:
        roles.stop_all()
