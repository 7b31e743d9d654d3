"""The fleet image itself, through testcontainers: healthcheck, non-root user, tini, layers.

Needs the images from `make ci-images` (built by test_compose's helper when missing).
In CI (CI set) a missing Docker engine fails these tests; locally they skip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.docker_helpers import DOCKER, ensure_images

# No registry for the Ryuk reaper image here; every container is removed in a finally block.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy, LogMessageWaitStrategy

IMAGE = "fleet:local"
SECONDS = 1_000_000_000  # the Docker API counts health intervals in nanoseconds


@pytest.fixture(scope="module")
def images(docker_ready: None) -> None:
    ensure_images()


@pytest.fixture
def network(images: None) -> Iterator[Network]:
    net = Network()
    net.create()
    try:
        yield net
    finally:
        net.remove()


def _health(container: DockerContainer) -> str:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return str(wrapped.attrs["State"].get("Health", {}).get("Status", "none"))


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_worker_container_is_healthy_non_root_under_tini(network: Network) -> None:
    nats = (
        DockerContainer("fleet-ci-nats:local")
        .with_network(network)
        .with_network_aliases("nats")
        .waiting_for(LogMessageWaitStrategy("Server is ready").with_startup_timeout(60))
    )
    # The image's own HEALTHCHECK (`fleet check`, role from FLEET_ROLE), just checked faster.
    worker = (
        DockerContainer(IMAGE, command="worker")
        .with_network(network)
        .with_env("FLEET_NATS_URL", "nats://nats:4222")
        .with_env("FLEET_ROLE", "worker")
        .with_kwargs(healthcheck={"interval": 1 * SECONDS, "start_period": 1 * SECONDS})
        .waiting_for(HealthcheckWaitStrategy().with_startup_timeout(60))
    )
    # No NATS yet: the check fails with exit 1 and says why.
    check = (
        DockerContainer(IMAGE, command="check worker")
        .with_network(network)
        .with_env("FLEET_NATS_URL", "nats://nats:4222")
    )
    with check:
        assert check.wait() == 1
        _, err = check.get_logs()
        assert b"unhealthy: worker: cannot reach NATS at nats://nats:4222" in err
    with nats, worker:  # both started and waited for: NATS ready, then the worker healthy
        assert _health(worker) == "healthy"
        code, output = worker.exec(["fleet", "check"])
        assert code == 0, output
        assert output.startswith(b"ok: worker: nats nats://nats:4222 (JetStream)")
        assert b"consumer workers" in output

        assert worker.exec(["id", "-u"]).output.strip() == b"10001"
        pid1 = worker.exec(["cat", "/proc/1/cmdline"]).output.split(b"\0")
        assert pid1[:3] == [b"/usr/bin/tini", b"--", b"fleet"]
        # Read-only for the fleet user: the installed code cannot be changed at runtime.
        code, _ = worker.exec(["touch", "/opt/venv/bin/fleet"])
        assert code != 0


def _layers(image_tar: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    with tarfile.open(image_tar) as outer:
        for member in outer.getmembers():
            if not member.isfile() or member.size < 1024:
                continue
            raw = outer.extractfile(member)
            assert raw is not None
            if not tarfile.is_tarfile(raw):
                continue  # a manifest or config blob, not a layer
            raw.seek(0)
            with tarfile.open(fileobj=raw) as inner:
                for item in inner.getmembers():
                    yield member.name, inner, item


@pytest.mark.docker
@pytest.mark.timeout(300)
@pytest.mark.parametrize("image", ["fleet:local", "fleet-ci-fakes:local"])
def test_build_secret_is_in_no_layer(images: None, image: str, tmp_path: Path) -> None:
    """The host CA bundle reaches pip as a BuildKit secret, never as a file in a layer."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    need("a host CA bundle (/etc/ssl/certs/ca-certificates.crt)", bundle.exists())
    secret = hashlib.sha256(bundle.read_bytes()).hexdigest()
    saved = tmp_path / "image.tar"
    subprocess.run([DOCKER, "save", "-o", str(saved), image], check=True, timeout=300)
    offenders = []
    for layer, inner, item in _layers(saved):
        name = item.name.lstrip("./")
        if "run/secrets" in name or name.endswith("cacert"):
            offenders.append(f"{layer}: {name}")
        # The image's own bundle comes from Debian's ca-certificates package; any other
        # file with exactly the host bundle's bytes would be the secret, copied.
        if item.isfile() and item.size == bundle.stat().st_size:
            fh = inner.extractfile(item)
            assert fh is not None
            if hashlib.sha256(fh.read()).hexdigest() == secret and name != (
                "etc/ssl/certs/ca-certificates.crt"
            ):
                offenders.append(f"{layer}: {name} (host CA bundle)")
    assert offenders == []


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_browser_image_renders_headless_as_non_root(images: None) -> None:
    script = (
        'id -u; echo "$FLEET_CHROMIUM_PATH"; exec "$FLEET_CHROMIUM_PATH" '
        "--no-sandbox --disable-gpu --dump-dom 'data:text/html,<title>t</title><p>rendered</p>'"
    )
    browser = DockerContainer("fleet-browser:local").with_kwargs(
        entrypoint=["/usr/bin/tini", "--", "sh", "-c", script], shm_size="256m"
    )
    with browser:
        assert browser.wait() == 0, browser.get_logs()
        out, _ = browser.get_logs()
    lines = out.decode().splitlines()
    assert lines[:2] == ["10001", "/usr/lib/chromium/chromium-headless-shell"]
    assert "<p>rendered</p>" in out.decode()
