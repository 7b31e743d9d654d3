"""The supervisor's kubernetes backend through the official client, against
tests/fakes/kube_api.py (the API server's Deployment scale subresource, on loopback): no
cluster can be started here. The client is configured as outside a cluster, from a
kubeconfig with a bearer token, by the backend's own `connect_cluster`.

The burst test runs the stand-in's "Deployment controller" as real `fleet worker`
processes (the local backend) for the replicas the supervisor patches in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from fleet.errors import ConfigError
from fleet.scaling.base import BackendError
from fleet.scaling.kubernetes import KubernetesBackend, ScaleApi, connect_cluster, pod_namespace
from fleet.scaling.local import LocalBackend
from fleet.settings import Settings
from fleet.supervisor import Policy, Supervisor
from tests.conftest import Roles, wait_for
from tests.fakes.kube_api import Deployment, KubeApi
from tests.pipeline_helpers import get_status, indexed_urls
from tests.scaling_helpers import BURST, burst_scenario
from tests.site import LoopbackSite

pytest.importorskip("kubernetes")

NAMESPACE = "fleet"
TOKEN = "test-service-account-token"


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApi]:
    """The stand-in on loopback, with the supervisor's Role allowing `worker` only, and
    KUBECONFIG pointing the client at it."""
    state = KubeApi(token=TOKEN, allowed={(NAMESPACE, "worker"), (NAMESPACE, "gone")})
    state.deployments[(NAMESPACE, "worker")] = Deployment(replicas=1, ready=1)
    state.deployments[(NAMESPACE, "indexer")] = Deployment(replicas=1, ready=1)
    runner = web.AppRunner(state.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "supervisor", "user": {"token": TOKEN}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "supervisor", "namespace": NAMESPACE},
            }
        ],
        "current-context": "standin",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield state
    finally:
        await runner.cleanup()


def client() -> ScaleApi:
    return connect_cluster(os.environ["KUBECONFIG"])  # as outside a cluster


async def test_reads_and_patches_the_scale_subresource(kube: KubeApi) -> None:
    backend = KubernetesBackend(client(), deployment="worker", namespace=NAMESPACE)
    await backend.ping()
    assert [(r.name, r.state) for r in await backend.replicas()] == [("worker-0", "running")]

    await backend.scale_to(3)
    worker = kube.deployments[(NAMESPACE, "worker")]
    assert worker.replicas == 3
    patch = kube.requests[-1]
    assert patch.path == "/apis/apps/v1/namespaces/fleet/deployments/worker/scale"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 3}}
    # Counted as the HPA counts: the replicas asked for; those without a pod yet are pending.
    assert [r.state for r in await backend.replicas()] == ["running", "pending", "pending"]
    worker.ready = 3
    stats = await backend.get_worker_stats()
    assert [(s.state, s.cpu_percent, s.memory_bytes) for s in stats] == [
        ("running", None, None)
    ] * 3

    await backend.scale_to(1)  # a scale-down: Kubernetes terminates pods; none counts then
    assert worker.replicas == 1 and len(await backend.replicas()) == 1
    await backend.close()


async def test_rbac_and_missing_deployments_are_named(kube: KubeApi) -> None:
    api = client()
    other = KubernetesBackend(api, deployment="indexer", namespace=NAMESPACE)
    with pytest.raises(BackendError) as forbidden:
        await other.scale_to(5)
    message = str(forbidden.value)
    assert "HTTP 403" in message and 'cannot patch resource "deployments/scale"' in message
    assert "resourceNames [indexer]" in message
    assert kube.deployments[(NAMESPACE, "indexer")].replicas == 1  # untouched

    gone = KubernetesBackend(api, deployment="gone", namespace=NAMESPACE)
    with pytest.raises(BackendError, match=r"HTTP 404.*not found.*FLEET_SUPERVISOR_DEPLOYMENT"):
        await gone.ping()
    assert TOKEN not in message  # the token never shows in an error


class NoLag:
    async def lag(self) -> int:
        return 0


async def test_health_names_the_kubernetes_dependency(kube: KubeApi) -> None:
    policy = Policy(min_replicas=1, max_replicas=3, target_lag=10)
    api = client()
    sup = Supervisor(
        policy, NoLag(), KubernetesBackend(api, deployment="worker", namespace=NAMESPACE),
        interval_s=1,
    )  # fmt: skip
    await sup.step()
    ok, body = sup.health()
    assert ok and body["backend"] == "kubernetes"
    assert body["dependencies"]["kubernetes"]["ok"] is True
    denied = Supervisor(
        policy, NoLag(), KubernetesBackend(api, deployment="indexer", namespace=NAMESPACE),
        interval_s=1,
    )  # fmt: skip
    await denied.step()
    ok, body = denied.health()
    assert not ok and "HTTP 403" in body["dependencies"]["kubernetes"]["error"]
    assert TOKEN not in str(body)


async def test_wrong_token_and_unreachable_server(
    kube: KubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube.token = "rotated"
    backend = KubernetesBackend(client(), deployment="worker", namespace=NAMESPACE)
    with pytest.raises(BackendError, match="HTTP 401"):
        await backend.replicas()

    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:1"
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(unreachable))
    down = KubernetesBackend(client(), deployment="worker", namespace=NAMESPACE)
    with pytest.raises(BackendError, match="kubernetes: get deployments/worker/scale"):
        await down.ping()


def test_no_cluster_and_no_kubeconfig_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match=r"no service account .* no usable kubeconfig"):
        connect_cluster(str(tmp_path / "missing"))


def test_namespace_from_settings_then_the_pod(tmp_path: Path) -> None:
    own = tmp_path / "namespace"
    own.write_text("crawl\n")
    assert pod_namespace(Settings(supervisor_namespace="x"), namespace_file=own) == "x"
    assert pod_namespace(Settings(), namespace_file=own) == "crawl"
    assert pod_namespace(Settings(), namespace_file=tmp_path / "none") == "default"


@pytest.mark.timeout(240)
async def test_kubernetes_backend_burst_to_max_then_back_to_min(
    kube: KubeApi, settings: Settings, site: LoopbackSite
) -> None:
    settings = settings.replace(
        render="never",
        worker_concurrency=8,
        drain_timeout_s=8.0,
        ack_wait_s=10.0,
        supervisor_min=1,
        supervisor_max=4,
        supervisor_target_lag=250,
        supervisor_max_step=4,
        supervisor_cooldown_s=4.0,
        supervisor_interval_s=1.0,
        supervisor_namespace=NAMESPACE,
    )
    roles = Roles(settings)
    roles.start("indexer")
    # The "Deployment controller": real worker processes for spec.replicas; a removed one
    # gets SIGTERM and drains, as a pod does within terminationGracePeriodSeconds.
    pods = LocalBackend(roles.env, stop_grace_s=15.0)

    async def reconcile(deployment: Deployment) -> None:
        await pods.scale_to(deployment.replicas)
        deployment.ready = len(await pods.replicas())

    kube.on_patch = reconcile
    await reconcile(kube.deployments[(NAMESPACE, "worker")])
    backend = KubernetesBackend.from_settings(client(), settings)
    policy = Policy.from_settings(settings)
    urls = [site.url(f"/slow/{n}?s=0.2") for n in range(BURST)]
    try:
        run = await burst_scenario(
            settings, backend, policy, urls, interval_s=settings.supervisor_interval_s
        )

        async def all_indexed() -> bool:
            return len(indexed_urls(settings)) == BURST

        await wait_for(all_indexed, timeout=30)
    finally:
        with contextlib.suppress(Exception):
            await pods.close()
        roles.stop_all()
    run.assert_promised(settings, "kubernetes (stand-in)")
    assert pods.crashed == []
    patches = [r.body for r in kube.requests if r.method == "PATCH"]
    assert {"spec": {"replicas": policy.max_replicas}} in patches
    counts = indexed_urls(settings)
    assert sorted(counts) == sorted(urls)
    assert set(counts.values()) == {1}
    status = await get_status(settings)
    assert status["dead_letters"] == 0
    assert status["streams"]["urls"]["messages"] == 0
