"""deploy/kubernetes/ checked offline: every resource against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: an unknown field is an error), the kustomizations built
when kustomize (or kubectl's) is installed, and what fleet relies on: drain within the
grace period, non-root pods, `fleet check` probes, the supervisor's RBAC limited to one
Deployment's scale, KEDA's trigger on the right stream and consumer.

No cluster can be started here: nothing is applied.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleet.nats.streams import WORKERS_CONSUMER
from fleet.settings import Settings
from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy/kubernetes/base"
KEDA = ROOT / "deploy/kubernetes/keda"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes still supported upstream when written
DEFAULTS = Settings()


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomize(directory: Path) -> list[dict[str, Any]] | None:
    """`kustomize build` (or `kubectl kustomize`) of ``directory``; None without either."""
    for tool in (["kustomize", "build"], ["kubectl", "kustomize"]):
        if shutil.which(tool[0]):
            out = subprocess.run(
                [*tool, str(directory)], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            return [doc for doc in yaml.safe_load_all(out) if doc]
    return None


def base_resources() -> list[dict[str, Any]]:
    built = kustomize(BASE)
    if built is not None:
        return built
    # No kustomize: the files themselves, with the kustomization's namespace applied.
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [doc for name in kustomization["resources"] for doc in load(BASE / name)]
    for doc in docs:
        doc["metadata"].setdefault("namespace", kustomization["namespace"])
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(c: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if any(ref.get("configMapRef") for ref in c.get("envFrom", [])):
        env = config | env
    return env


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    keda = yaml.safe_load((KEDA / "kustomization.yaml").read_text())
    assert set(keda["resources"]) == {"../base", "scaledobject.yaml"}


@pytest.mark.parametrize(
    "path",
    sorted(
        p for p in (*BASE.glob("*.yaml"), *KEDA.glob("*.yaml")) if p.name != "kustomization.yaml"
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_resource_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in load(path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no schema in kubernetes-validate; checked in test_keda_*
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomize_builds_validate_too() -> None:
    built = kustomize(BASE)
    need("kubectl or kustomize (Debian: kubernetes-client)", built is not None)
    assert built is not None
    keda = kustomize(KEDA)
    assert keda is not None
    for doc in built + keda:
        assert doc["metadata"].get("namespace") == "fleet", doc["metadata"]
        if not doc["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in keda}
    assert ("Deployment", "supervisor") not in kinds and (
        "Role",
        "supervisor-scale-worker",
    ) not in kinds
    assert ("ScaledObject", "worker") in kinds and ("Deployment", "worker") in kinds


def test_pods_run_as_non_root_read_only_without_capabilities() -> None:
    docs = base_resources()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"] and c["resources"]["requests"]
        if doc["metadata"]["name"] != "supervisor":
            assert pod["automountServiceAccountToken"] is False, doc["metadata"]["name"]


def test_workers_drain_within_their_grace_and_are_checked_by_fleet_check() -> None:
    docs = base_resources()
    config = by_kind(docs, "ConfigMap", "fleet-config")["data"]
    for role in ("worker", "indexer"):
        deployment = by_kind(docs, "Deployment", role)
        c = container(deployment)
        assert c["args"] == [role]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["exec"]["command"] == ["fleet", "check", role]
        drain = float(env_of(c, config).get("FLEET_DRAIN_TIMEOUT_S") or DEFAULTS.drain_timeout_s)
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    api = by_kind(docs, "Deployment", "api")
    c = container(api)
    assert c["args"][0] == "serve" and c["ports"][0]["containerPort"] == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    service = by_kind(docs, "Service", "api")
    assert service["spec"]["ports"][0]["port"] == 8000
    assert config["FLEET_NATS_URL"] == "nats://nats:4222"
    assert "FLEET_MEILI_API_KEY" not in config  # a Secret, never the ConfigMap


def test_supervisor_may_only_get_and_patch_the_worker_scale() -> None:
    docs = base_resources()
    role = by_kind(docs, "Role", "supervisor-scale-worker")
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "resourceNames": ["worker"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = by_kind(docs, "RoleBinding", "supervisor-scale-worker")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "supervisor-scale-worker",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "supervisor", "namespace": "fleet"}
    ] or binding["subjects"] == [{"kind": "ServiceAccount", "name": "supervisor"}]
    supervisor = by_kind(docs, "Deployment", "supervisor")
    pod = supervisor["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "supervisor"
    assert (
        supervisor["spec"]["replicas"] == 1 and supervisor["spec"]["strategy"]["type"] == "Recreate"
    )
    c = container(supervisor)
    env = {e["name"]: e for e in c["env"]}
    assert env["FLEET_SUPERVISOR_BACKEND"]["value"] == "kubernetes"
    assert env["FLEET_SUPERVISOR_DEPLOYMENT"]["value"] == "worker"
    assert env["FLEET_SUPERVISOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    settings = Settings.from_env({k: v["value"] for k, v in env.items() if "value" in v})
    assert settings.supervisor_backend == "kubernetes"  # every value parses and validates


def test_nats_keeps_jetstream_on_a_volume() -> None:
    docs = base_resources()
    nats = by_kind(docs, "StatefulSet", "nats")
    conf = by_kind(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "jetstream" in conf and "store_dir: /data" in conf
    mounts = {m["name"]: m["mountPath"] for m in container(nats)["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert [t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]] == ["data"]
    ports = {p["name"]: p["port"] for p in by_kind(docs, "Service", "nats")["spec"]["ports"]}
    assert ports == {"client": 4222, "monitor": 8222}


def test_keda_scaled_object_targets_the_workers_consumer() -> None:
    (scaled,) = load(KEDA / "scaledobject.yaml")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "worker",
    }
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # The HPA behaviour KEDA passes on must itself be a valid HPA behaviour.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-worker"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": max(1, spec["minReplicaCount"]),
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} <= set(
        meta
    )
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is string-valued
    assert meta["stream"] == DEFAULTS.urls_stream and meta["consumer"] == WORKERS_CONSUMER
    assert int(meta["lagThreshold"]) == DEFAULTS.supervisor_target_lag
    assert meta["natsServerMonitoringEndpoint"].endswith(":8222")
