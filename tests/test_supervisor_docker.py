"""The supervisor's Docker backend on a real engine.

A dedicated network holds NATS (`fleet-ci-nats:local`, published on 127.0.0.1 for this
process and the host-side indexer) and the slow test site (`fleet-ci-fakes:local`). A
"compose" worker container (compose's labels, limits, read-only root…) is the template the
backend copies. Everything created carries this run's unique project label and is removed
at the end, so nothing collides with tests/test_compose.py.

In CI (CI set) a missing engine fails these tests; locally they skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from fleet.scaling.base import BackendError
from fleet.scaling.docker import (
    COMPOSE_NUMBER,
    COMPOSE_ONEOFF,
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    MANAGED_LABEL,
    NUMBER_LABEL,
    WORKER_LABEL,
    DockerBackend,
    WorkerTemplate,
    compose_selector,
)
from fleet.settings import Settings
from fleet.supervisor import Policy
from tests.conftest import Roles, wait_for
from tests.docker_helpers import ensure_images
from tests.pipeline_helpers import get_status, indexed_urls
from tests.scaling_helpers import BURST, burst_scenario

# No registry for the Ryuk reaper image here; every container is removed in a finally block.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

IMAGE = "fleet:local"
SERVICE = "worker"
WORKER_ENV = {
    "FLEET_NATS_URL": "nats://nats:4222",
    "FLEET_ALLOW_HOSTS": "site:8000",
    "FLEET_ROLE": "worker",
    "FLEET_RENDER": "never",
    "FLEET_WORKER_CONCURRENCY": "8",
    "FLEET_DRAIN_TIMEOUT_S": "8",
    "FLEET_ACK_WAIT_S": "10",
    "FLEET_HOST_CONCURRENCY": "0",  # one test site: no per-host limits
    "FLEET_HOST_DELAY_S": "0",
}


class Infra:
    def __init__(self, network: Network, nats_url: str) -> None:
        self.network = network
        self.nats_url = nats_url


@pytest.fixture(scope="module")
def infra(docker_ready: None) -> Iterator[Infra]:
    ensure_images()
    network = Network()
    network.create()
    nats = (
        DockerContainer("fleet-ci-nats:local")
        .with_network(network)
        .with_network_aliases("nats")
        .waiting_for(LogMessageWaitStrategy("Server is ready").with_startup_timeout(60))
    )
    # Published on loopback only, on a free port (with_bind_ports cannot name the address;
    # docker-py takes (address, None) for "any port on this address").
    cast(dict[str, Any], nats.ports)["4222/tcp"] = ("127.0.0.1", None)
    site = (
        DockerContainer(
            "fleet-ci-fakes:local",
            command="tests.fakes.site --host 0.0.0.0 --port 8000 --delay 0.2",
        )
        .with_network(network)
        .with_network_aliases("site")
    )
    try:
        with nats, site:
            port = nats.get_exposed_port(4222)
            yield Infra(network, f"nats://127.0.0.1:{port}")
    finally:
        network.remove()


@pytest.fixture
def project() -> Iterator[str]:
    """A unique compose project name; its containers are removed afterwards."""
    name = f"fleet-sup-{uuid.uuid4().hex[:8]}"
    yield name
    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": f"{COMPOSE_PROJECT}={name}"}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)


def seed_worker(infra: Infra, project: str) -> Any:
    """The compose service's first container, as `docker compose up` would create it."""
    client = docker.from_env()
    return client.containers.run(
        IMAGE,
        ["worker"],
        name=f"{project}-{SERVICE}-1",
        detach=True,
        environment=WORKER_ENV,
        labels={
            COMPOSE_PROJECT: project,
            COMPOSE_SERVICE: SERVICE,
            COMPOSE_NUMBER: "1",
            COMPOSE_ONEOFF: "False",
            "com.docker.compose.config-hash": "test",
        },
        network=infra.network.name,
        read_only=True,
        tmpfs={"/tmp": ""},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        mem_limit="256m",
        nano_cpus=1_000_000_000,
        restart_policy={"Name": "unless-stopped"},
        stop_signal="SIGTERM",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy_url(docker_ready: None) -> Iterator[str]:
    """tests/fakes/docker_proxy.py on loopback, in front of the engine's socket."""
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.docker_proxy", "--port", str(port)], cwd=root
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "docker proxy did not start"
            time.sleep(0.1)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.docker
@pytest.mark.timeout(180)
async def test_copies_the_compose_worker_through_the_socket_proxy(
    infra: Infra, project: str, proxy_url: str
) -> None:
    seed = seed_worker(infra, project)
    # DOCKER_HOST as the supervisor's container gets it; every call goes through the proxy.
    client = docker.from_env(environment={"DOCKER_HOST": proxy_url})
    with pytest.raises(docker.errors.APIError) as denied:
        client.api.networks()
    assert denied.value.status_code == 403  # really the container-only proxy
    backend = DockerBackend(
        client.api, selector=compose_selector(project, SERVICE), stop_grace_s=15
    )
    await backend.ping()
    assert [r.id for r in await backend.replicas()] == [seed.id]
    await backend.scale_to(3)
    replicas = await backend.replicas()
    assert len(replicas) == 3
    assert replicas[0].id == seed.id
    assert [r.name for r in replicas[1:]] == [f"{project}-{SERVICE}-2", f"{project}-{SERVICE}-3"]

    raw = docker.from_env().api
    want, got = raw.inspect_container(seed.id), raw.inspect_container(replicas[2].id)
    for key in ("Image", "Cmd", "Entrypoint", "User", "WorkingDir", "Healthcheck"):
        assert got["Config"].get(key) == want["Config"].get(key), key
    assert sorted(got["Config"]["Env"]) == sorted(want["Config"]["Env"])
    for key in (
        "Memory",
        "NanoCpus",
        "ReadonlyRootfs",
        "Tmpfs",
        "CapDrop",
        "SecurityOpt",
        "RestartPolicy",
        "NetworkMode",
    ):
        assert got["HostConfig"][key] == want["HostConfig"][key], key
    labels = got["Config"]["Labels"]
    assert labels[COMPOSE_PROJECT] == project and labels[COMPOSE_SERVICE] == SERVICE
    assert labels[COMPOSE_NUMBER] == "3" and labels[COMPOSE_ONEOFF] == "False"
    assert labels["com.docker.compose.config-hash"] == "test"
    assert labels[MANAGED_LABEL] == "true"
    assert list(got["NetworkSettings"]["Networks"]) == [infra.network.name]

    async def all_running() -> bool:
        return all(r.state == "running" for r in await backend.replicas())

    await wait_for(all_running, timeout=30)
    stats = await backend.get_worker_stats()
    assert len(stats) == 3
    assert all(s.memory_bytes and s.cpu_percent is not None for s in stats), stats
    assert {s.memory_limit_bytes for s in stats} == {256 * 1024 * 1024}

    # Scale down: the newest go first, stopped (SIGTERM, drain) and removed.
    await backend.scale_to(1)
    assert [r.id for r in await backend.replicas()] == [seed.id]  # stopping ones don't count
    await backend.close()  # waits for the stops under way
    left = raw.containers(all=True, filters={"label": f"{COMPOSE_PROJECT}={project}"})
    assert [c["Id"] for c in left] == [seed.id]
    # The seed drains on SIGTERM and exits 0 within the grace period, like the copies did.
    seed.stop(timeout=15)
    seed.reload()
    assert seed.attrs["State"]["ExitCode"] == 0


@pytest.mark.docker
@pytest.mark.timeout(120)
async def test_standalone_workers_from_an_image_without_compose(infra: Infra) -> None:
    pool = f"fleet-sup-{uuid.uuid4().hex[:8]}"
    fallback = WorkerTemplate.standalone(
        image=IMAGE,
        env=WORKER_ENV,
        labels={WORKER_LABEL: pool},
        network=infra.network.name,
        name_prefix=pool,
        stop_grace_s=10,
    )
    client = docker.from_env()
    backend = DockerBackend(
        client.api, selector={WORKER_LABEL: pool}, stop_grace_s=10, fallback=fallback
    )
    try:
        assert await backend.replicas() == []
        await backend.scale_to(2)  # from zero: nothing to copy, so the image template
        replicas = await backend.replicas()
        assert [r.name for r in replicas] == [f"{pool}-1", f"{pool}-2"]
        attrs = client.api.inspect_container(replicas[1].id)
        assert attrs["Config"]["Labels"][NUMBER_LABEL] == "2"
        assert attrs["Config"]["Cmd"] == ["worker"]
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert list(attrs["NetworkSettings"]["Networks"]) == [infra.network.name]
        await backend.scale_to(0)
        await backend.close()
        assert client.containers.list(all=True, filters={"label": f"{WORKER_LABEL}={pool}"}) == []
    finally:
        for c in client.containers.list(all=True, filters={"label": f"{WORKER_LABEL}={pool}"}):
            c.remove(force=True)


@pytest.mark.docker
@pytest.mark.timeout(300)
async def test_docker_backend_burst_to_max_then_back_to_min(
    infra: Infra, project: str, tmp_path: Path
) -> None:
    prefix = project.replace("-", "_").upper()
    # Fresh stream names per run (the NATS container is shared by this module's tests).
    env = {**WORKER_ENV, "FLEET_STREAM_PREFIX": prefix, "FLEET_SUBJECT_PREFIX": project}
    settings = Settings(
        nats_url=infra.nats_url,
        stream_prefix=prefix,
        subject_prefix=project,
        sink=f"sqlite:///{tmp_path / 'fleet.db'}",
        indexer_batch_wait_s=0.1,
        ack_wait_s=10.0,
        supervisor_min=1,
        supervisor_max=4,
        supervisor_target_lag=250,
        supervisor_max_step=4,
        supervisor_cooldown_s=6.0,
        supervisor_interval_s=2.0,
        supervisor_stop_grace_s=15.0,
    )
    client = docker.from_env()
    seed = client.containers.run(
        IMAGE,
        ["worker"],
        name=f"{project}-{SERVICE}-1",
        detach=True,
        environment=env,
        labels={
            COMPOSE_PROJECT: project,
            COMPOSE_SERVICE: SERVICE,
            COMPOSE_NUMBER: "1",
            COMPOSE_ONEOFF: "False",
        },
        network=infra.network.name,
        read_only=True,
        tmpfs={"/tmp": ""},
        mem_limit="256m",
    )
    roles = Roles(settings)
    roles.start("indexer")  # on the host, against the published NATS port
    backend = DockerBackend(
        client.api,
        selector=compose_selector(project, SERVICE),
        stop_grace_s=settings.supervisor_stop_grace_s,
    )
    policy = Policy.from_settings(settings)
    urls = [f"http://site:8000/page/{n}" for n in range(BURST)]
    try:
        run = await burst_scenario(
            settings, backend, policy, urls, interval_s=settings.supervisor_interval_s
        )

        async def all_indexed() -> bool:
            return len(indexed_urls(settings)) == BURST

        await wait_for(all_indexed, timeout=30)
        await backend.close()
        assert [r.id for r in await backend.replicas()] == [seed.id]
    finally:
        roles.stop_all()
        await asyncio.to_thread(seed.remove, force=True)
    run.assert_promised(settings, "docker")
    counts = indexed_urls(settings)
    assert sorted(counts) == sorted(urls)
    assert set(counts.values()) == {1}
    status = await get_status(settings)
    assert status["dead_letters"] == 0
    assert status["streams"]["urls"]["messages"] == 0
    assert status["streams"]["results"]["messages"] == BURST  # no result written twice


# -- without an engine


COMPOSE_ATTRS: dict[str, Any] = {
    "Name": "/fleet-worker-1",
    "Config": {
        "Image": "fleet:local",
        "Cmd": ["worker"],
        "Env": ["FLEET_ROLE=worker"],
        "User": "",
        "Labels": {COMPOSE_PROJECT: "fleet", COMPOSE_SERVICE: "worker", COMPOSE_NUMBER: "1"},
        "Healthcheck": {"Test": ["CMD", "fleet", "check", "worker"]},
        "Hostname": "abc123",
    },
    "HostConfig": {
        "NetworkMode": "fleet_default",
        "Memory": 512 * 1024 * 1024,
        "PortBindings": {"9000/tcp": [{"HostPort": "9000"}]},
        "ReadonlyRootfs": True,
    },
    "NetworkSettings": {
        "Networks": {
            "fleet_other": {"Aliases": ["fleet-worker-1", "worker", "abc123"]},
            "fleet_default": {"Aliases": ["fleet-worker-1", "worker", "abc123"]},
        }
    },
}


def test_template_copies_a_compose_container() -> None:
    template = WorkerTemplate.from_container(COMPOSE_ATTRS, multi_network=False)
    name, config = template.render(4)
    assert name == "fleet-worker-4"
    assert config["Image"] == "fleet:local" and config["Cmd"] == ["worker"]
    assert "Hostname" not in config  # each container gets its own
    assert config["HostConfig"]["Memory"] == 512 * 1024 * 1024
    assert "PortBindings" not in config["HostConfig"]  # would collide on the host
    labels = config["Labels"]
    assert labels[COMPOSE_NUMBER] == "4" and labels[COMPOSE_ONEOFF] == "False"
    assert labels[MANAGED_LABEL] == "true"
    # An old engine: only the primary network (more would need /networks/{id}/connect).
    assert config["NetworkingConfig"] == {
        "EndpointsConfig": {"fleet_default": {"Aliases": ["fleet-worker-4", "worker"]}}
    }
    both = WorkerTemplate.from_container(COMPOSE_ATTRS, multi_network=True).render(5)[1]
    assert list(both["NetworkingConfig"]["EndpointsConfig"]) == ["fleet_default", "fleet_other"]
    # Rendering leaves the template as it was.
    assert template.config["Labels"][COMPOSE_NUMBER] == "1"
    assert MANAGED_LABEL not in template.config["Labels"]


async def test_unreachable_engine_is_a_backend_error() -> None:
    client = docker.DockerClient(base_url="tcp://127.0.0.1:1", version="1.41", timeout=2)
    backend = DockerBackend(client.api, selector={"x": "y"}, stop_grace_s=1)
    with pytest.raises(BackendError, match="docker: ping failed"):
        await backend.ping()
    with pytest.raises(BackendError, match="docker: list containers failed"):
        await backend.replicas()
