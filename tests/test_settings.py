from __future__ import annotations

import pytest

from fleet.settings import DEFAULT_NATS_URL, Settings, SettingsError


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
