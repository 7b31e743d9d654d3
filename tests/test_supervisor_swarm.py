"""The supervisor's Swarm backend on a real single-node swarm.

The engine becomes a swarm manager for this module (`docker swarm init --advertise-addr
127.0.0.1`) and leaves the swarm afterwards, unless it already was a manager (then it is
left so). The worker service's tasks use the host's network (`--network host`): an overlay
network cannot reach the host's loopback, where this test's nats-server, site and indexer
listen; so every byte stays on 127.0.0.1. The backend talks to the engine only through
tests/fakes/docker_proxy.py with the stack's allow-list (services and tasks).

In CI (CI set) a missing engine fails these tests; locally they skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from docker.types import (
    ContainerSpec,
    Healthcheck,
    Mount,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from fleet.scaling.base import BackendError
from fleet.scaling.swarm import SwarmBackend, _unix
from fleet.settings import Settings
from fleet.supervisor import Policy, Supervisor
from tests.conftest import Roles, need, wait_for
from tests.docker_helpers import DOCKER, ensure_images
from tests.pipeline_helpers import get_status, indexed_urls
from tests.scaling_helpers import BURST, burst_scenario, free_port
from tests.site import LoopbackSite

IMAGE = "fleet:local"
NS = 1_000_000_000
GATEWAY_BRIDGE = "docker_gwbridge"  # made by the first task on a swarm network namespace


@pytest.fixture(scope="module")
def swarm(docker_ready: None) -> Iterator[docker.DockerClient]:
    """This engine as a swarm manager; left as it was found at the end."""
    client = docker.from_env()
    state = client.info()["Swarm"]
    initialised = False
    had_bridge = bool(client.networks.list(names=[GATEWAY_BRIDGE]))
    if state["LocalNodeState"] == "inactive":
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        initialised = True
    elif not state.get("ControlAvailable"):
        need("a Docker engine that is a swarm manager, or in no swarm", False)
    try:
        ensure_images()
        yield client
    finally:
        if initialised:
            client.swarm.leave(force=True)
            if not had_bridge:
                for net in client.networks.list(names=[GATEWAY_BRIDGE]):
                    with contextlib.suppress(docker.errors.APIError):
                        net.remove()


@pytest.fixture
def proxy_url(swarm: docker.DockerClient) -> Iterator[str]:
    """tests/fakes/docker_proxy.py with the Swarm stack's allow-list, on loopback."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.docker_proxy", "--port", str(port), "--allow", "swarm"],
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(docker.errors.DockerException):
                docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=10).api.ping()
                break
            assert time.monotonic() < deadline, "docker proxy did not start"
            time.sleep(0.1)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def service_name(swarm: docker.DockerClient) -> Iterator[str]:
    """A unique service name; the service is removed afterwards."""
    name = f"fleet-swarm-{uuid.uuid4().hex[:8]}_worker"
    yield name
    for service in swarm.services.list(filters={"name": name}):
        with contextlib.suppress(docker.errors.APIError):
            service.remove()


def worker_service(
    client: docker.DockerClient,
    name: str,
    env: dict[str, str],
    *,
    replicas: int = 1,
    stop_grace_s: float = 20.0,
    mode: str = "replicated",
) -> str:
    """The workers' service as deploy/swarm/stack.yml describes it, on the host network."""
    spec = ContainerSpec(
        IMAGE,
        args=["worker"],
        env=env,
        read_only=True,
        mounts=[Mount("/tmp", None, type="tmpfs")],
        stop_grace_period=int(stop_grace_s * NS),
        stop_signal="SIGTERM",
        cap_drop=["ALL"],
        # Roomier than the stack's (10 s, 8 s): on a busy 2-core machine one check (a
        # Python process) can take several seconds, and a task is `running` only once healthy.
        healthcheck=Healthcheck(
            test=["CMD", "fleet", "check", "worker"],
            interval=4 * NS,
            timeout=30 * NS,
            retries=3,
            start_period=30 * NS,
        ),
    )
    template = TaskTemplate(
        spec,
        resources=Resources(mem_limit=256 * 1024 * 1024),
        restart_policy=RestartPolicy(condition="on-failure", delay=2 * NS),
        networks=["host"],
    )
    service: dict[str, Any] = client.api.create_service(
        template,
        name=name,
        mode=ServiceMode(mode, replicas=replicas if mode == "replicated" else None),
        labels={"com.docker.stack.namespace": name.split("_", maxsplit=1)[0]},
    )
    return str(service["ID"])


class NoLag:
    async def lag(self) -> int:
        return 0


def worker_env(settings: Settings) -> dict[str, str]:
    return {**settings.to_env(), "FLEET_ROLE": "worker"}


def die_events(client: docker.DockerClient, service: str, since: float) -> list[dict[str, Any]]:
    """The engine's `die` events of the service's containers since ``since`` (Unix time)."""
    events = client.api.events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={
            "type": "container",
            "event": "die",
            "label": f"com.docker.swarm.service.name={service}",
        },
        decode=True,
    )
    return list(events)


def test_engine_timestamps() -> None:
    assert _unix("2024-05-01T12:00:00.123456789Z") == pytest.approx(1714564800.123456)
    assert _unix("2024-05-01T12:00:00Z") == 1714564800.0
    assert _unix(None) == 0.0 and _unix("garbage") == 0.0


async def test_unreachable_manager_is_a_backend_error() -> None:
    client = docker.DockerClient(base_url="tcp://127.0.0.1:1", version="1.41", timeout=2)
    backend = SwarmBackend(client.api, service="fleet_worker")
    with pytest.raises(BackendError, match="swarm: ping failed"):
        await backend.ping()
    with pytest.raises(BackendError, match="swarm: inspect service fleet_worker failed"):
        await backend.replicas()


@pytest.mark.docker
@pytest.mark.timeout(120)
async def test_misconfigured_services_are_named(
    swarm: docker.DockerClient,
    service_name: str,
    proxy_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = docker.DockerClient(base_url=proxy_url, timeout=10).api
    with pytest.raises(docker.errors.APIError) as denied:
        api.containers()
    assert denied.value.status_code == 403  # really the services-and-tasks proxy
    backend = SwarmBackend(api, service=service_name)
    with pytest.raises(BackendError, match=rf"inspect service {service_name} failed.*NotFound"):
        await backend.ping()
    sup = Supervisor(Policy(min_replicas=1, max_replicas=3, target_lag=10), NoLag(), backend,
                     interval_s=1)  # fmt: skip
    await sup.step()
    ok, body = sup.health()
    assert not ok and body["backend"] == "swarm"
    assert "NotFound" in body["dependencies"]["swarm"]["error"]

    env = {"FLEET_ROLE": "worker", "FLEET_DRAIN_TIMEOUT_S": "8", "FLEET_NATS_URL": "nats://x:1"}
    worker_service(swarm, service_name, env, replicas=0, stop_grace_s=5)
    with caplog.at_level(logging.WARNING, logger="fleet.scaling.swarm"):
        assert await backend.replicas() == []
        await backend.replicas()
    await sup.step()
    ok, body = sup.health()
    assert body["dependencies"]["swarm"]["ok"] is True and ok
    warnings = [r.getMessage() for r in caplog.records if "stop_grace_period" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not at every tick
    assert "5s does not exceed" in warnings[0] and "at least 18s" in warnings[0]

    global_name = service_name.replace("_worker", "_global")
    try:
        worker_service(swarm, global_name, env, mode="global")
        with pytest.raises(BackendError, match=r"global mode.*must be replicated"):
            await SwarmBackend(api, service=global_name).scale_to(2)
    finally:
        swarm.api.remove_service(global_name)


@pytest.mark.docker
@pytest.mark.timeout(300)
async def test_swarm_backend_burst_to_max_then_back_to_min(
    swarm: docker.DockerClient,
    service_name: str,
    proxy_url: str,
    settings: Settings,
    site: LoopbackSite,
) -> None:
    settings = settings.replace(
        render="never",
        worker_concurrency=8,
        drain_timeout_s=8.0,
        ack_wait_s=10.0,
        supervisor_min=1,
        supervisor_max=3,
        supervisor_target_lag=250,
        supervisor_max_step=4,
        supervisor_cooldown_s=6.0,
        supervisor_interval_s=2.0,
        supervisor_service=service_name,
    )
    created_at = time.time()
    worker_service(swarm, service_name, worker_env(settings), replicas=1, stop_grace_s=20)
    api = docker.DockerClient(base_url=proxy_url, timeout=30).api
    backend = SwarmBackend.from_settings(api, settings)

    async def seed_running() -> bool:
        return [r.state for r in await backend.replicas()] == ["running"]

    await wait_for(seed_running, timeout=90, interval=0.5)
    seed = (await backend.replicas())[0]
    # When did each replica count first have every task running (healthy: a task with a
    # healthcheck is `running` only once it passed)? Polled beside the supervisor.
    running_at: dict[int, float] = {}
    stop_watch = asyncio.Event()

    async def watch() -> None:
        while not stop_watch.is_set():
            with contextlib.suppress(BackendError):
                states = [r.state for r in await backend.replicas()]
                if states and all(s == "running" for s in states):
                    running_at.setdefault(len(states), time.monotonic())
            await asyncio.sleep(0.1)

    roles = Roles(settings)
    roles.start("indexer")
    policy = Policy.from_settings(settings)
    urls = [site.url(f"/slow/{n}?s=0.2") for n in range(BURST)]
    watcher = asyncio.create_task(watch())
    try:
        run = await burst_scenario(
            settings, backend, policy, urls, interval_s=settings.supervisor_interval_s
        )
        reached_max = running_at.get(policy.max_replicas)

        async def all_indexed() -> bool:
            return len(indexed_urls(settings)) == BURST

        await wait_for(all_indexed, timeout=30)

        async def drained() -> bool:
            return await backend.stopping() == []

        await wait_for(drained, timeout=60, interval=0.5)
        left = await backend.replicas()
    finally:
        stop_watch.set()
        await watcher
        roles.stop_all()
    run.assert_promised(settings, "swarm")
    assert reached_max is not None, "never had 3 tasks running"
    running_s = reached_max - run.published_at
    print(
        f"swarm: lag → {policy.max_replicas} tasks scheduled in {run.to_max_s:.1f}s, "
        f"all running (healthy) in {running_s:.1f}s after the burst was published "
        f"(interval {settings.supervisor_interval_s:g}s)"
    )
    # Scaling never replaced a task: the first one ran throughout and still does.
    assert [r.id for r in left] == [seed.id]
    # Swarm stopped the two extra tasks with SIGTERM, never SIGKILL after the grace (137):
    # each drained and exited 0, or was still starting (Swarm removes tasks not running yet
    # first) and died of the signal before its handlers were in place (143), holding nothing.
    deaths = die_events(swarm, service_name, created_at)
    codes = [e["Actor"]["Attributes"]["exitCode"] for e in deaths]
    assert len(codes) == 2 and set(codes) <= {"0", "143"}, deaths
    counts = indexed_urls(settings)
    assert sorted(counts) == sorted(urls)
    assert set(counts.values()) == {1}
    status = await get_status(settings)
    assert status["dead_letters"] == 0
    assert status["streams"]["urls"]["messages"] == 0
    assert status["streams"]["results"]["messages"] == BURST


# -- the stack file, deployed

ROOT = Path(__file__).resolve().parent.parent
STACK_FILES = (ROOT / "deploy/swarm/stack.yml", ROOT / "deploy/swarm/stack.ci.yml")
# The images the stack runs; FLEET_TEST_IMAGE / FLEET_TEST_FAKES_IMAGE test a branch's
# build without retagging the shared fleet:local.
FLEET_IMAGE = os.environ.get("FLEET_TEST_IMAGE", IMAGE)
FAKES_IMAGE = os.environ.get("FLEET_TEST_FAKES_IMAGE", "fleet-ci-fakes:local")
STACK_URLS = 300


def overlay(base: Any, override: Any) -> Any:
    """``override`` over ``base`` as compose merges files: mappings key by key, anything
    else (lists: command, healthcheck test) replaced. `docker stack deploy -c a -c b` would
    append the lists instead, running both healthchecks' commands as one."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: overlay(base[k], v) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override
        }
    return override


def stack_file(tmp_path: Path) -> Path:
    """stack.yml with stack.ci.yml over it, as one file (anchors resolved)."""
    base, ci = (yaml.safe_load(f.read_text()) for f in STACK_FILES)
    merged = overlay(base, ci)
    for doc in (merged, merged["services"]):
        for key in [k for k in doc if k.startswith("x-")]:
            del doc[key]
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


def docker_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        [DOCKER, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"docker {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def stack_status(stack: str) -> dict[str, Any]:
    out = docker_cli(
        "run", "--rm", "--network", f"{stack}_fleet", "-e", "FLEET_NATS_URL=nats://nats:4222",
        FLEET_IMAGE, "status", "--json",
    )  # fmt: skip
    return dict(json.loads(out))


@pytest.fixture
def stack(swarm: docker.DockerClient) -> Iterator[str]:
    """A unique stack name (not `fleet`: the supervisor must find its own stack's workers);
    the stack, its volumes and the node labels its placement needs are removed afterwards."""
    name = f"fleetst{uuid.uuid4().hex[:6]}"
    node = swarm.info()["Swarm"]["NodeID"]
    labels = swarm.api.inspect_node(node)["Spec"].get("Labels") or {}
    added = [k for k in ("fleet.nats", "fleet.meili") if k not in labels]
    for key in added:
        docker_cli("node", "update", "--label-add", f"{key}=true", node)
    try:
        yield name
    finally:
        subprocess.run([DOCKER, "stack", "rm", name], capture_output=True, check=False)
        selector = {"label": f"com.docker.stack.namespace={name}"}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (
            swarm.api.containers(all=True, filters=selector)
            or swarm.networks.list(filters=selector)
        ):
            time.sleep(1)
        for volume in swarm.volumes.list(filters=selector):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
        for key in added:
            subprocess.run([DOCKER, "node", "update", "--label-rm", key, node], check=False)


@pytest.mark.docker
@pytest.mark.timeout(600)
async def test_stack_deploys_and_its_supervisor_scales_the_workers(
    swarm: docker.DockerClient, stack: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MEILI_MASTER_KEY": "stack-test-master-key-0123456789",
        "FLEET_IMAGE": FLEET_IMAGE,
        "FLEET_CI_FAKES_IMAGE": FAKES_IMAGE,
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    proc = subprocess.run(
        [DOCKER, "stack", "deploy", "-c", str(stack_file(tmp_path)), "--resolve-image", "never",
         stack],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    api = swarm.api
    worker = f"{stack}_worker"
    services = ("nats", "meili", "site", "docker-proxy", "worker", "indexer", "supervisor")

    def running(service: str) -> int:
        tasks = api.tasks(filters={"service": f"{stack}_{service}", "desired-state": "running"})
        return sum(t["Status"]["State"] == "running" for t in tasks)

    async def all_up() -> bool:
        return all(running(s) >= 1 for s in services)

    # The supervisor's task runs only once its healthcheck passed: its /health answered 200,
    # so it read the lag from NATS and the worker service through the proxy.
    await wait_for(all_up, timeout=240, interval=2)

    def replicas() -> int:
        return int(api.inspect_service(worker)["Spec"]["Mode"]["Replicated"]["Replicas"])

    assert replicas() == 1
    urls = "".join(f"http://site:8000/page/{n}\n" for n in range(STACK_URLS))
    published = time.monotonic()  # from the start of `fleet publish` (a container to start)
    docker_cli(
        "run", "--rm", "-i", "--network", f"{stack}_fleet", "-e", "FLEET_NATS_URL=nats://nats:4222",
        FLEET_IMAGE, "publish", "-", stdin=urls,
    )  # fmt: skip
    publish_s = time.monotonic() - published

    async def at_max() -> bool:
        return replicas() == 3

    await wait_for(at_max, timeout=30, interval=0.2)
    scaled_s = time.monotonic() - published

    async def three_running() -> bool:
        return running("worker") == 3

    await wait_for(three_running, timeout=120, interval=0.5)
    running_s = time.monotonic() - published

    async def done() -> bool:
        st = stack_status(stack)
        idx = st["consumers"]["indexer"]
        return bool(
            st["streams"]["urls"]["messages"] == 0
            and idx
            and idx["pending"] == 0
            and idx["ack_pending"] == 0
            and st["streams"]["results"]["messages"] == STACK_URLS
        )

    await wait_for(done, timeout=180, interval=3)

    async def back_to_min() -> bool:
        return replicas() == 1 and running("worker") == 1

    await wait_for(back_to_min, timeout=120, interval=1)
    print(
        f"\nswarm stack: `fleet publish` (a container) took {publish_s:.1f}s; from its start, "
        f"replicas=3 in {scaled_s:.1f}s, 3 tasks running (healthy) in {running_s:.1f}s, "
        f"back to 1 in {time.monotonic() - published:.1f}s (interval 2s, cooldown 10s)"
    )
    status = stack_status(stack)
    assert status["dead_letters"] == 0
