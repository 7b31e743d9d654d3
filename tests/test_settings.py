from __future__ import annotations

import pytest
from nats.js.api import KeyValueConfig

from fleet.nats.replicas import replicated_kv
from fleet.nats.streams import topology
from fleet.settings import DEFAULT_NATS_URL, Settings, SettingsError
from fleet.urls import redact_servers


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.nats_url is None and s.nats_server == DEFAULT_NATS_URL
    assert s.max_deliver == 5 and s.sink == "sqlite:///fleet.db"


def test_env_and_flags_flag_wins() -> None:
    env = {
        "FLEET_NATS_URL": "nats://n:4222",
        "FLEET_MAX_DELIVER": "7",
        "FLEET_ACK_WAIT_S": "12.5",
        "FLEET_ALLOW_HOSTS": "127.0.0.1:8081, docs.internal",
        "FLEET_WORKER_CONCURRENCY": "8",
    }
    s = Settings.from_env(env)
    assert s.nats_url == "nats://n:4222" and s.max_deliver == 7 and s.ack_wait_s == 12.5
    assert s.allow_hosts == ("127.0.0.1:8081", "docs.internal")
    s2 = s.replace(nats_url="nats://other:4222", worker_concurrency=None)
    assert s2.nats_url == "nats://other:4222" and s2.worker_concurrency == 8


def test_round_trip_through_env() -> None:
    s = Settings(nats_url="nats://x:1", allow_hosts=("a:1", "b"), meili_api_key="k", max_deliver=9)
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FLEET_MAX_DELIVER": "many"}, "FLEET_MAX_DELIVER='many' is not a valid int"),
        ({"FLEET_MAX_DELIVER": "0"}, "FLEET_MAX_DELIVER must be > 0"),
        ({"FLEET_SINK": "postgres://x"}, "sqlite:///path/to/fleet.db"),
        ({"FLEET_LOG_FORMAT": "xml"}, "FLEET_LOG_FORMAT"),
        ({"FLEET_API_PORT": "70000"}, "FLEET_API_PORT must be a TCP port"),
        ({"FLEET_API_READ_KEY": "r-key"}, "set FLEET_API_KEY too"),
        ({"FLEET_API_KEY": "same", "FLEET_API_READ_KEY": "same"}, "must differ"),
        ({"FLEET_API_KEY": "has space"}, "without spaces"),
        ({"FLEET_SUPERVISOR_URL": "supervisor:8080"}, "http(s)://"),
        ({"FLEET_SQLITE_FTS_DETAIL": "none"}, "column or full"),
        ({"FLEET_SQLITE_READERS": "0"}, "FLEET_SQLITE_READERS must be > 0"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert fragment in str(err.value)


def test_secret_not_in_repr() -> None:
    assert "sekret" not in repr(Settings(meili_api_key="sekret"))
    keyed = Settings(api_key="admin-sekret", api_read_key="read-sekret")
    assert "sekret" not in repr(keyed)


def test_seed_list_of_servers() -> None:
    s = Settings.from_env({"FLEET_NATS_URL": "nats://a:4222, nats://u:p@b:4222,,nats://c:4222"})
    assert s.nats_servers == ("nats://a:4222", "nats://u:p@b:4222", "nats://c:4222")
    assert s.nats_server == "nats://a:4222"  # the first seed, for tools that take one URL
    one = Settings.from_env({"FLEET_NATS_URL": "nats://n:4222"})
    assert one.nats_servers == ("nats://n:4222",) and one.nats_server == "nats://n:4222"
    assert Settings().nats_servers == (DEFAULT_NATS_URL,)
    assert redact_servers(s.nats_servers) == "nats://a:4222,nats://***@b:4222,nats://c:4222"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (",", "FLEET_NATS_URL is empty"),
        ("nats://a:4222,http://u:secret@b:4222", "scheme 'http'"),
        ("nats://a:4222,ws://b:8080", "mixes websocket"),
    ],
)
def test_bad_seed_lists_say_how_to_fix(url: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"FLEET_NATS_URL": url})
    assert fragment in str(err.value)
    assert "secret" not in str(err.value)


def test_stream_replicas_and_placement() -> None:
    s = Settings.from_env({"FLEET_STREAM_REPLICAS": "3", "FLEET_STREAM_PLACEMENT_TAGS": "ssd, eu"})
    assert s.stream_replicas == 3 and s.stream_placement_tags == ("ssd", "eu")
    assert Settings().stream_replicas == 1
    for bad in ("0", "6"):
        with pytest.raises(SettingsError) as err:
            Settings.from_env({"FLEET_STREAM_REPLICAS": bad})
        assert "FLEET_STREAM_REPLICAS must be 1 to 5" in str(err.value)
        assert "3 (or 5) on a JetStream cluster" in str(err.value)


def test_every_stream_and_bucket_gets_the_replicas() -> None:
    s = Settings(stream_replicas=3, stream_placement_tags=("ssd",))
    topo = topology(s)
    for config in (topo.urls, topo.results, topo.dlq, topo.skipped):
        assert config.num_replicas == 3
        assert config.placement is not None and config.placement.tags == ["ssd"]
    kv = replicated_kv(KeyValueConfig(bucket="B"), s)
    assert kv.replicas == 3 and kv.placement is not None and kv.placement.tags == ["ssd"]
    plain = topology(Settings())
    assert plain.urls.num_replicas == 1 and plain.urls.placement is None
