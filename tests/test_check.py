"""`fleet check ROLE`: the healthcheck behind every container, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from fleet.check import ROLES, check
from fleet.errors import ConfigError
from fleet.nats.server import EmbeddedNats, find_nats_server
from fleet.nats.streams import ensure_topology
from fleet.settings import Settings
from fleet.sinks import open_sink
from tests.conftest import fleet_cli, make_settings, need, need_browser
from tests.fakes.meili import FakeMeili
from tests.site import LoopbackSite

NATS_PASSWORD = "s3cret-nats-pw"
MEILI_KEY = "meili-master-key-k3y"


@pytest.fixture
def settings(nats_server: EmbeddedNats, site: LoopbackSite, tmp_path: Path) -> Settings:
    # Rendering off: a worker's check then asks NATS only (the browser's check is below).
    return make_settings(nats_server, site.hostport, tmp_path).replace(render="never")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _create_topology(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_server)
    try:
        await ensure_topology(nc.jetstream(), settings)
    finally:
        await nc.close()


async def test_roles_unhealthy_until_topology_exists(settings: Settings) -> None:
    assert (await check("nats", settings)).ok
    for role in ("publisher", "worker", "indexer"):
        result = await check(role, settings)
        assert not result.ok
        assert "stream FLEET_URLS is missing" in result.detail
    await _create_topology(settings)
    for role in ("nats", "publisher", "worker"):
        result = await check(role, settings)
        assert result.ok, result.line()
    # The indexer creates its SQLite database; until then its check names the sink.
    result = await check("indexer", settings)
    assert not result.ok
    assert result.detail.startswith("sink: ")
    store = open_sink(settings)
    await store.open()
    await store.close()
    assert (await check("indexer", settings)).ok
    worker = await check("worker", settings)
    assert "consumer workers" in worker.detail
    indexer = await check("indexer", settings)
    assert "consumer indexer" in indexer.detail
    assert "sink SqliteSink" in indexer.detail or "documents" in indexer.detail


async def test_missing_consumer_is_named(settings: Settings) -> None:
    await _create_topology(settings)
    nc = await nats.connect(settings.nats_server)
    try:
        await nc.jetstream().delete_consumer(settings.results_stream, "indexer")
    finally:
        await nc.close()
    assert (await check("worker", settings)).ok
    result = await check("indexer", settings)
    assert not result.ok
    assert result.detail == f"consumer indexer on {settings.results_stream} is missing"


async def test_unreachable_nats_and_sink(settings: Settings) -> None:
    down = settings.replace(nats_url=f"nats://127.0.0.1:{_free_port()}", nats_connect_timeout_s=1.0)
    result = await check("worker", down)
    assert not result.ok
    assert "cannot reach NATS" in result.detail
    await _create_topology(settings)
    no_meili = settings.replace(sink=f"http://127.0.0.1:{_free_port()}")
    result = await check("indexer", no_meili)
    assert not result.ok
    assert result.detail.startswith("sink: cannot reach Meilisearch")
    assert (await check("worker", no_meili)).ok


async def test_no_jetstream() -> None:
    port = _free_port()
    proc = subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(port)])
    try:
        settings = Settings(nats_url=f"nats://127.0.0.1:{port}")
        for _ in range(50):
            result = await check("nats", settings)
            if "cannot reach" not in result.detail:
                break
        assert not result.ok
        assert "has no JetStream" in result.detail
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_exit_codes(settings: Settings, nats_server: EmbeddedNats) -> None:
    env = {**os.environ, **settings.to_env()}
    env.pop("FLEET_ROLE", None)
    bad = subprocess.run(
        [*fleet_cli(), "check", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("unhealthy: worker: stream FLEET_URLS is missing")
    ok = subprocess.run(
        [*fleet_cli(), "check", "--json"],
        env={**env, "FLEET_ROLE": "nats"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    usage = subprocess.run(
        [*fleet_cli(), "check", "nonsense"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server that wants user admin / NATS_PASSWORD."""
    try:
        find_nats_server()
    except ConfigError:
        need("nats-server", False)
    with EmbeddedNats(str(tmp_path / "js"), user="admin", password=NATS_PASSWORD) as server:
        yield server


@pytest.fixture
def keyed_meili() -> Iterator[FakeMeili]:
    fake = FakeMeili(master_key=MEILI_KEY)
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


async def _check_roles(
    settings: Settings, roles: tuple[str, ...] = ROLES
) -> dict[tuple[str, bool], tuple[int, str]]:
    """`fleet check ROLE [--json]` for each role: (role, json) → (exit code, stdout+stderr)."""
    env = {**os.environ, **settings.to_env()}
    env.pop("FLEET_ROLE", None)
    slots = asyncio.Semaphore(4)  # a shared 2-core machine

    async def one(role: str, as_json: bool) -> tuple[int, str]:
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                *fleet_cli(),
                "check",
                role,
                "--timeout",
                "10",
                *(["--json"] if as_json else []),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return proc.returncode, out.decode() + err.decode()

    keys = [(role, as_json) for role in roles for as_json in (False, True)]
    answers = await asyncio.gather(*(one(role, as_json) for role, as_json in keys))
    return dict(zip(keys, answers, strict=True))


def _assert_no_secret(
    answers: dict[tuple[str, bool], tuple[int, str]], secrets: tuple[str, ...]
) -> None:
    for (role, as_json), (_, output) in answers.items():
        for secret in secrets:
            assert secret not in output, (role, as_json, output)


def _exit_codes(answers: dict[tuple[str, bool], tuple[int, str]]) -> dict[str, set[int]]:
    codes: dict[str, set[int]] = {}
    for (role, _), (code, _) in answers.items():
        codes.setdefault(role, set()).add(code)
    return codes


async def test_credentials_never_in_check_output(
    auth_nats: EmbeddedNats, keyed_meili: FakeMeili, tmp_path: Path
) -> None:
    assert NATS_PASSWORD in auth_nats.url
    settings = Settings(
        nats_url=auth_nats.url,
        sink=keyed_meili.url,
        meili_api_key=MEILI_KEY,
        supervisor_port=_free_port(),  # no supervisor: its check fails
        api_port=_free_port(),  # no `fleet serve` either
        render="never",  # the worker's browser check is tested on its own below
    )
    secrets = (NATS_PASSWORD, MEILI_KEY)

    # Reachable, but nothing created yet: the roles name what is missing.
    answers = await _check_roles(settings, ("publisher", "worker", "indexer"))
    _assert_no_secret(answers, secrets)
    assert _exit_codes(answers) == {"publisher": {1}, "worker": {1}, "indexer": {1}}
    assert "stream FLEET_URLS is missing" in answers[("worker", True)][1]

    # Topology and index exist: every role but the (absent) supervisor and API is healthy.
    await _create_topology(settings)
    store = open_sink(settings)
    await store.open()
    await store.close()
    answers = await _check_roles(settings)
    _assert_no_secret(answers, secrets)
    assert "nats://***@127.0.0.1" in answers[("nats", False)][1]
    assert _exit_codes(answers) == {
        "nats": {0},
        "publisher": {0},
        "worker": {0},
        "indexer": {0},
        "supervisor": {1},
        "api": {1},
    }
    assert json.loads(answers[("indexer", True)][1])["ok"] is True

    # A wrong Meilisearch key: the indexer's check fails on the sink, naming the variable.
    wrong_key = "wrong-meili-key-w0rng"
    answers = await _check_roles(settings.replace(meili_api_key=wrong_key), ("indexer",))
    _assert_no_secret(answers, (*secrets, wrong_key))
    assert _exit_codes(answers) == {"indexer": {1}}
    assert "FLEET_MEILI_API_KEY" in answers[("indexer", False)][1]

    # A wrong NATS password: every role fails, and says so with the URL redacted.
    wrong_password = "wrong-nats-pw-w0rng"
    bad_url = auth_nats.url.replace(NATS_PASSWORD, wrong_password)
    answers = await _check_roles(settings.replace(nats_url=bad_url))
    _assert_no_secret(answers, (*secrets, wrong_password))
    assert _exit_codes(answers) == {role: {1} for role in ROLES}
    assert "cannot reach NATS at nats://***@127.0.0.1" in answers[("worker", True)][1]

    # A seed list (a server down first, then the real one): every URL shown redacted,
    # healthy through the second seed.
    down = f"nats://fleet:{wrong_password}@127.0.0.1:{_free_port()}"
    answers = await _check_roles(settings.replace(nats_url=f"{down},{auth_nats.url}"), ("nats",))
    _assert_no_secret(answers, (*secrets, wrong_password))
    assert _exit_codes(answers) == {"nats": {0}}
    assert answers[("nats", False)][1].count("nats://***@127.0.0.1") == 2


async def test_a_rendering_workers_check_launches_the_browser(settings: Settings) -> None:
    need_browser()
    await _create_topology(settings)
    for mode in ("always", "auto"):
        result = await check(
            "worker", settings.replace(render=mode), timeout_s=30, environ=os.environ
        )
        assert result.ok, result.line()
        assert "consumer workers; browser " in result.detail
        assert "launched, rendered a page, closed" in result.detail


async def test_a_broken_browser_makes_a_rendering_worker_unhealthy(
    settings: Settings, tmp_path: Path
) -> None:
    need_browser()
    await _create_topology(settings)
    missing = settings.replace(render="always", chromium_path=str(tmp_path / "no-chromium"))
    result = await check("worker", missing, timeout_s=30, environ=os.environ)
    assert not result.ok
    assert result.detail.startswith(f"browser: no Chromium at {tmp_path / 'no-chromium'}")
    assert "FLEET_CHROMIUM_PATH" in result.detail  # the fix
    broken = tmp_path / "chromium"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)
    auto = settings.replace(render="auto", chromium_path=str(broken))
    result = await check("worker", auto, timeout_s=30, environ=os.environ)
    assert not result.ok
    assert result.detail.startswith("browser: cannot launch Chromium"), result.detail
