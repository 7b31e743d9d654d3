"""fleet on a three-node JetStream cluster (real nats-server processes on loopback).

Replicated streams, consumers and KV bucket; seed lists; the URL stream's leader killed
mid-run (every URL indexed once, nothing dead-lettered, the roles reconnect by themselves);
the consumer's leader killed while the supervisor scales (no decision on a lag not read).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from fleet.errors import ConfigError
from fleet.nats.kv import render_bucket
from fleet.nats.server import EmbeddedNats, find_nats_server
from fleet.nats.session import connect, nats_session
from fleet.nats.streams import INDEXER_CONSUMER, REAPER_CONSUMER, WORKERS_CONSUMER, topology
from fleet.settings import Settings
from tests.cluster_helpers import NatsCluster
from tests.conftest import need, wait_for
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
        names += [settings.advisories_stream]
        for name in names:
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and info.cluster.leader
            assert len(info.cluster.replicas or []) == 2, name  # + the leader: three copies
        for stream, durable in (
            (settings.urls_stream, WORKERS_CONSUMER),
            (settings.results_stream, INDEXER_CONSUMER),
            (settings.advisories_stream, REAPER_CONSUMER),
        ):
            ci = await js.consumer_info(stream, durable)
            # Durable consumers inherit their stream's replicas (0: "as the stream").
            assert ci.cluster is not None and len(ci.cluster.replicas or []) == 2, durable
        await render_bucket(js, settings)
        kv = await js.stream_info(f"KV_{settings.render_bucket}")
        assert kv.config.num_replicas == 3


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
    # A seed that is down (first in the list, or anywhere: the order is shuffled) is skipped.
    cluster.kill("n1")
    settings = cluster_settings.replace(nats_url=cluster.seeds)
    nc = await connect(settings, name="test")
    try:
        assert nc.connected_url is not None
        assert cluster.name_of(nc.connected_url.geturl()) in {"n2", "n3"}
        # The servers announce every node of the cluster to the client.
        assert len(nc.discovered_servers) + len(nc.servers) >= 3
    finally:
        await nc.close()
    # Created while a node is down: JetStream still places three replicas (two make a
    # quorum); the third catches up when its server is back.
    async with nats_session(settings, name="test") as session:
        info = await session.js.stream_info(settings.urls_stream)
        assert info.config.num_replicas == 3
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
