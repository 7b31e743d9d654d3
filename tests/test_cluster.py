"""fleet on a three-node JetStream cluster (real nats-server processes on loopback).

Replicated streams, consumers and KV bucket; seed lists; the URL stream's leader killed
mid-run (every URL indexed once, nothing dead-lettered, the roles reconnect by themselves);
the consumer's leader killed while the supervisor scales (no decision on a lag not read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from fleet.disposition import Settler
from fleet.errors import ConfigError
from fleet.messages import UrlTask, dead_letter_decoder, url_task_encoder
from fleet.nats.frontier import Frontier
from fleet.nats.hosts import hosts_bucket, robots_bucket
from fleet.nats.kv import render_bucket, render_samples_bucket
from fleet.nats.server import EmbeddedNats, find_nats_server
from fleet.nats.session import connect, nats_session
from fleet.nats.streams import INDEXER_CONSUMER, WORKERS_CONSUMER, topology
from fleet.scaling.local import LocalBackend
from fleet.settings import Settings
from fleet.supervisor import Decision, JetStreamLag, Policy, Supervisor
from fleet.sweep import Sweeper
from tests.cluster_helpers import (
    NatsCluster,
    consumer_leader,
    move_consumer_leader,
    move_stream_leader,
    stream_leader,
)
from tests.conftest import Roles, need, wait_for
from tests.pipeline_helpers import cli_json, drained, get_status, indexed_urls, write_urls
from tests.site import LoopbackSite

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    try:
        find_nats_server()
    except ConfigError:
        need("nats-server", False)
    # Tags for the placement test: two servers in zone a, one in zone b.
    with NatsCluster(tmp_path / "cluster", tags=[["az:a"], ["az:a"], ["az:b"]]) as c:
        yield c


@pytest.fixture
def cluster_settings(cluster: NatsCluster, site: LoopbackSite, tmp_path: Path) -> Settings:
    return Settings(
        nats_url=cluster.seeds,
        stream_replicas=3,
        allow_hosts=(site.hostport,),
        sink=f"sqlite:///{tmp_path / 'fleet.db'}",
        render="never",
        # One loopback host, many requests at once: the test chooses no politeness limits.
        host_concurrency=0,
        host_delay_s=0.0,
        ack_wait_s=5.0,
        backoff_base_s=0.5,
        backoff_max_s=5.0,
        fetch_timeout_s=5.0,
        indexer_batch_wait_s=0.1,
        drain_timeout_s=5.0,
        dedup_window_s=600.0,
    )


async def test_every_stream_consumer_and_bucket_has_three_replicas(
    cluster_settings: Settings,
) -> None:
    settings = cluster_settings.replace(render="auto")
    async with nats_session(settings, name="test") as session:
        js = session.js
        names = [settings.urls_stream, settings.results_stream, settings.dlq_stream]
        names += [settings.skipped_stream]
        for name in names:
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and info.cluster.leader
            assert len(info.cluster.replicas or []) == 2, name  # + the leader: three copies
        for stream, durable in (
            (settings.urls_stream, WORKERS_CONSUMER),
            (settings.results_stream, INDEXER_CONSUMER),
        ):
            ci = await js.consumer_info(stream, durable)
            # Durable consumers inherit their stream's replicas (0: "as the stream").
            assert ci.cluster is not None and len(ci.cluster.replicas or []) == 2, durable
        await render_bucket(js, settings)
        await hosts_bucket(js, settings)
        await robots_bucket(js, settings)
        await render_samples_bucket(js, settings)
        frontier = Frontier(session.nc, js, settings)
        try:
            await frontier.bucket()
            await frontier.create_cap("c1", 10)
        finally:
            await frontier.close()
        buckets = (settings.render_bucket, settings.render_samples_bucket, settings.hosts_bucket)
        for bucket in (*buckets, settings.robots_bucket, settings.crawls_bucket):
            kv = await js.stream_info(f"KV_{bucket}")
            assert kv.config.num_replicas == 3, bucket
        cap = await js.stream_info(settings.crawl_cap_stream("c1"))
        assert cap.config.num_replicas == 3


async def test_replicas_change_in_place_on_a_cluster(cluster_settings: Settings) -> None:
    one = cluster_settings.replace(stream_replicas=1)
    async with nats_session(one, name="test") as session:
        assert (await session.js.stream_info(one.urls_stream)).config.num_replicas == 1
        await render_bucket(session.js, one)
    # The same fleet restarted with FLEET_STREAM_REPLICAS=3: streams and bucket scale up.
    async with nats_session(cluster_settings, name="test") as session:
        js = session.js
        info = await js.stream_info(cluster_settings.urls_stream)
        assert info.config.num_replicas == 3
        await render_bucket(js, cluster_settings)
        kv = await js.stream_info(f"KV_{cluster_settings.render_bucket}")
        assert kv.config.num_replicas == 3


async def test_placement_tags_choose_the_servers(cluster_settings: Settings) -> None:
    zone_a = cluster_settings.replace(
        stream_replicas=2, stream_placement_tags=("az:a",), stream_prefix="ZA", subject_prefix="za"
    )
    async with nats_session(zone_a, name="test") as session:
        info = await session.js.stream_info(zone_a.urls_stream)
        assert info.cluster is not None
        peers = {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}
        assert peers == {"n1", "n2"}  # the two servers tagged az:a
    # Three replicas on servers tagged az:a: only two exist; the error names the settings.
    too_many = zone_a.replace(stream_replicas=3, stream_prefix="ZB", subject_prefix="zb")
    with pytest.raises(ConfigError) as err:
        async with nats_session(too_many, name="test"):
            pass
    message = str(err.value)
    assert "cannot place 3 replicas" in message and "tagged az:a" in message
    assert "FLEET_STREAM_REPLICAS must not exceed" in message


async def test_replicas_on_a_single_server_say_how_to_fix(nats_server: EmbeddedNats) -> None:
    settings = Settings(nats_url=nats_server.url, stream_replicas=3)
    with pytest.raises(ConfigError) as err:
        async with nats_session(settings, name="test"):
            pass
    message = str(err.value)
    assert "FLEET_STREAM_REPLICAS=3 needs a JetStream cluster" in message
    assert "set FLEET_STREAM_REPLICAS=1" in message


async def test_seed_list_connects_past_a_dead_seed_and_learns_the_cluster(
    cluster: NatsCluster, cluster_settings: Settings
) -> None:
    settings = cluster_settings
    async with nats_session(settings, name="test"):
        pass  # the streams exist: created with every node up (see docs/scaling.md)
    # A seed that is down (first in the list, or anywhere: the order is shuffled) is skipped.
    cluster.kill("n1")
    nc = await connect(settings, name="test")
    try:
        assert nc.connected_url is not None
        assert cluster.name_of(nc.connected_url.geturl()) in {"n2", "n3"}
        # The servers announce every node of the cluster to the client.
        assert len(nc.discovered_servers) + len(nc.servers) >= 3
    finally:
        await nc.close()
    # A role starting now finds its streams on the two nodes left (after electing new
    # leaders for those n1 led: it waits for that).
    async with nats_session(settings, name="test") as session:
        assert (await session.js.stream_info(settings.urls_stream)).config.num_replicas == 3
    cluster.restart("n1")
    cluster.wait_formed()

    async def all_current() -> bool:
        async with cluster.client() as nc:
            info = await nc.jetstream().stream_info(settings.urls_stream)
        replicas = info.cluster.replicas if info.cluster else None
        return bool(replicas) and all(p.current for p in replicas or [])

    await wait_for(all_current, timeout=60, interval=0.5)


async def test_a_stream_config_left_from_a_single_server_is_scaled_not_rejected(
    cluster: NatsCluster,
) -> None:
    # Streams made by an older fleet (no num_replicas) are reconciled like any drift.
    async with cluster.client() as nc:
        js = nc.jetstream()
        old = topology(Settings()).urls
        await js.add_stream(
            StreamConfig(
                name=old.name, subjects=old.subjects, retention=old.retention, storage=old.storage
            )
        )
    settings = Settings(nats_url=cluster.seeds, stream_replicas=3)
    async with nats_session(settings, name="test") as session:
        info = await session.js.stream_info(settings.urls_stream)
        assert info.config.num_replicas == 3


async def test_a_bucket_opened_without_a_majority_waits_for_the_cluster(
    cluster: NatsCluster, cluster_settings: Settings
) -> None:
    # A worker started during an election opens its buckets once it is over (it exited
    # with a timeout before).
    settings = cluster_settings
    async with nats_session(settings, name="test"):
        pass
    cluster.kill("n2")
    cluster.kill("n3")
    async with cluster.client() as nc:
        opening = asyncio.create_task(hosts_bucket(nc.jetstream(), settings))
        await asyncio.sleep(8.0)  # past a JetStream request's timeout (5 s)
        assert not opening.done()
        cluster.restart("n2")
        kv = await asyncio.wait_for(opening, timeout=60)
        assert kv is not None
    cluster.restart("n3")
    cluster.wait_formed()


# -- the URL stream's leader killed mid-run


async def _queue_left(nc: NATS, settings: Settings) -> int | None:
    """URLs still in the work queue, or None while nobody answers (an election)."""
    try:
        async with asyncio.timeout(1):
            info = await nc.jetstream().stream_info(settings.urls_stream)
    except Exception:
        return None
    return int(info.state.messages)


def _reconnects(log: Path) -> list[str]:
    """The servers a role's log says it reconnected to."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line.rsplit(" ", 1)[-1] for line in lines if "reconnected to NATS at" in line]


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_url_stream_leader_killed_mid_run_every_url_indexed_once(
    cluster: NatsCluster, cluster_settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    settings = cluster_settings
    urls = [site.url(f"/slow/{n}?s=0.3") for n in range(400)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
    roles = Roles(settings)
    logs = {name: tmp_path / f"{name}.log" for name in ("worker-1", "worker-2", "indexer")}
    try:
        procs = {
            "worker-1": roles.start("worker", "--concurrency", "4", log=logs["worker-1"]),
            "worker-2": roles.start("worker", "--concurrency", "4", log=logs["worker-2"]),
            "indexer": roles.start("indexer", log=logs["indexer"]),
        }

        def role_connections() -> dict[str, int]:
            return {
                name: sum(
                    c in ("fleet-worker", "fleet-indexer") for c in cluster.connection_names(name)
                )
                for name in cluster.nodes
            }

        async def all_connected() -> bool:
            return sum(role_connections().values()) == 3

        await wait_for(all_connected, timeout=90, interval=0.2)
        # The victim leads the URL stream and the workers' consumer, and serves role
        # connections: its death costs the queue its leader and those roles their server.
        on_victim = role_connections()
        victim = max(on_victim, key=lambda n: on_victim[n])
        async with cluster.client() as nc:
            await move_stream_leader(nc, settings.urls_stream, victim)
            await move_consumer_leader(nc, settings.urls_stream, WORKERS_CONSUMER, victim)

            async def mid_run() -> bool:
                left = await _queue_left(nc, settings)
                return left is not None and left < len(urls) - 40 and left > 150

            await wait_for(mid_run, timeout=120, interval=0.1)
            before = await _queue_left(nc, settings)
            assert before is not None
            killed_at = cluster.kill(victim)

            # Recovered when the queue shrinks again: a URL acked after the kill had its
            # page stored in the results stream first, so both streams work again.
            async def progressing() -> bool:
                left = await _queue_left(nc, settings)
                return left is not None and left < before

            await wait_for(progressing, timeout=120, interval=0.1)
            recovery_s = time.monotonic() - killed_at
            new_stream_leader = await stream_leader(nc, settings.urls_stream)
            new_consumer_leader = await consumer_leader(nc, settings.urls_stream, WORKERS_CONSUMER)
        print(
            f"\nleader {victim} killed with {before} URLs left ({on_victim[victim]} role "
            f"connection(s) on it): pipeline progressing again after {recovery_s:.1f}s; "
            f"new leaders: stream {new_stream_leader}, consumer {new_consumer_leader}"
        )
        assert victim not in (new_stream_leader, new_consumer_leader)
        cluster.restart(victim)
        cluster.wait_formed()

        async def done() -> bool:
            try:
                if len(indexed_urls(settings)) != len(urls) or not await drained(settings):
                    return False
                # An ack lost with the leader can leave an indexed URL in the stream; the
                # indexer's sweep removes it (no dead letter: its page is stored).
                return bool((await get_status(settings))["streams"]["urls"]["messages"] == 0)
            except Exception:  # an answer lost to the restart: ask again
                return False

        await wait_for(done, timeout=180, interval=0.5)
        # Nobody exited: the roles on the killed node found another one by themselves.
        assert all(p.poll() is None for p in procs.values()), {
            n: p.poll() for n, p in procs.items()
        }
        reconnected = {n: _reconnects(path) for n, path in logs.items()}
        moved = [n for n, targets in reconnected.items() if targets]
        assert len(moved) >= on_victim[victim], reconnected
        victim_url = cluster.nodes[victim].url
        assert all(t != victim_url for targets in reconnected.values() for t in targets)
    finally:
        roles.stop_all()
    counts = indexed_urls(settings)
    assert sorted(counts) == sorted(urls)
    assert set(counts.values()) == {1}  # each URL indexed exactly once
    st = await get_status(settings)
    assert st["dead_letters"] == 0
    # Nothing queued twice: a parked copy the new leader delivered again is dropped.
    assert st["streams"]["urls"]["messages"] == 0, st
    # Redelivered URLs (acks lost with the leader) published no second result: the new
    # leader kept the duplicate window.
    assert st["streams"]["results"]["messages"] == len(urls)
    async with cluster.client() as nc:
        info = await nc.jetstream().stream_info(settings.urls_stream)
    assert info.cluster is not None and all(p.current for p in info.cluster.replicas or [])


# -- the consumer's leader killed while the supervisor scales


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_consumer_leader_killed_mid_scale_no_decision_on_a_lag_not_read(
    cluster: NatsCluster, cluster_settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    # min 0 and no cooldown: a failed read taken as lag 0 would stop every worker at once,
    # one taken as "unknown" the KEDA way would start max. The 100 URLs are slow (the site
    # holds them for two minutes), so the true lag stays 100 and wants 2 workers throughout.
    settings = cluster_settings.replace(
        fetch_timeout_s=150.0,
        supervisor_min=0,
        supervisor_max=4,
        supervisor_target_lag=50,
        supervisor_cooldown_s=0.0,
        supervisor_interval_s=1.0,
        supervisor_stop_grace_s=15.0,
    )
    urls = [site.url(f"/slow/{n}?s=120") for n in range(100)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
    backend = LocalBackend(Roles(settings).env, stop_grace_s=settings.supervisor_stop_grace_s)
    lag = JetStreamLag(settings, timeout_s=2.0)
    sup = Supervisor(Policy.from_settings(settings), lag, backend, interval_s=1.0)
    decisions: list[Decision | None] = []
    try:
        first = await sup.step()  # 0 -> 2: the workers are starting when the leader dies
        assert first is not None and (first.current, first.desired) == (0, 2), first
        # The victim leads the consumer and serves the supervisor's own connection.
        supervisor_on = next(
            n for n in cluster.nodes if "fleet-supervisor" in cluster.connection_names(n)
        )
        async with cluster.client() as nc:
            await move_consumer_leader(nc, settings.urls_stream, WORKERS_CONSUMER, supervisor_on)
        killed_at = cluster.kill(supervisor_on)
        first_good: float | None = None
        good_after = 0
        deadline = time.monotonic() + 120
        while good_after < 5:  # five decisions on lags read from the new leader
            assert time.monotonic() < deadline, decisions
            started = time.monotonic()
            decision = await sup.step()
            decisions.append(decision)
            if decision is not None:
                first_good = first_good or time.monotonic() - killed_at
                good_after += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        held = sum(d is None for d in decisions)
        print(
            f"\nconsumer leader {supervisor_on} killed mid-scale: {held} tick(s) held on a lag "
            f"not read, lag read again from {lag.leader} after {first_good:.1f}s"
        )
        assert lag.leader is not None and lag.leader != supervisor_on
        for d in decisions:
            if d is not None:
                # The lag read after the election is the true one (never a stale zero)...
                assert (d.lag, d.desired) == (100, 2), d
        # ...and nothing scaled but the first decision: no scale to max, none to zero.
        text = sup.metrics.render()[0].decode()
        assert 'fleet_supervisor_scale_events_total{direction="up"} 1.0' in text
        assert 'fleet_supervisor_scale_events_total{direction="down"} 0.0' in text
        assert len(await backend.replicas()) == 2
        # Workers started during the election waited for it instead of exiting.
        assert backend.crashed == []
    finally:
        await backend.close()
        await lag.close()


async def test_a_server_that_stops_answering_is_left_for_another(
    cluster: NatsCluster, cluster_settings: Settings
) -> None:
    # A frozen server keeps the TCP connection open: only unanswered pings reveal it.
    settings = cluster_settings.replace(nats_ping_interval_s=0.5)
    nc = await connect(settings, name="test")
    try:
        assert nc.connected_url is not None
        frozen = cluster.name_of(nc.connected_url.geturl())
        frozen_at = cluster.freeze(frozen)
        try:

            async def moved() -> bool:
                url = nc.connected_url
                return (
                    nc.is_connected and url is not None and cluster.name_of(url.geturl()) != frozen
                )

            await wait_for(moved, timeout=30, interval=0.1)
            print(f"\nleft frozen {frozen} after {time.monotonic() - frozen_at:.1f}s")
        finally:
            cluster.thaw(frozen)
    finally:
        await nc.close()


async def test_the_sweep_dead_letters_a_stranded_url_on_a_cluster(
    cluster: NatsCluster, cluster_settings: Settings
) -> None:
    # max_deliver=1: the one delivery, taken by a "worker" that never answers, is the last.
    settings = cluster_settings.replace(max_deliver=1, ack_wait_s=1.0)
    async with nats_session(settings, name="test") as session:
        js = session.js
        task = UrlTask(url="http://127.0.0.1:9/crashed", id="crashed", published_at=time.time())
        await js.publish(settings.urls_subject, url_task_encoder.encode(task))
        settler = Settler(js, settings, stage="worker", max_deliver=1)
        sweeper = Sweeper(session.nc, js, settler, settings)
        await sweeper.listen()
        sub = await js.pull_subscribe_bind(durable=WORKERS_CONSUMER, stream=settings.urls_stream)
        await sub.fetch(1, timeout=10)
        await sub.unsubscribe()  # every worker gone

        async def drained() -> bool:
            await sweeper.sweep()
            return (await js.stream_info(settings.urls_stream)).state.messages == 0

        await wait_for(drained, timeout=60, interval=0.5)
        dlq = await js.stream_info(settings.dlq_stream)
        assert dlq.state.messages == 1
        letter = dead_letter_decoder.decode((await js.get_msg(settings.dlq_stream, 1)).data or b"")
        assert (letter.url, letter.reason, letter.attempts) == (task.url, "max_deliveries", 1)
        assert sweeper.swept == 1
