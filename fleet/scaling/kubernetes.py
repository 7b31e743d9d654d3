"""Workers as the pods of a Kubernetes Deployment (`deploy/kubernetes/`): the supervisor
reads and patches the Deployment's ``scale`` subresource, as the HPA does, and the
Deployment controller creates pods or deletes them.

Its RBAC is a Role allowing only ``get`` and ``patch`` on ``deployments/scale`` of that one
Deployment (``resourceNames``): it cannot list pods, read secrets or change the pod spec.

Scale-down is Kubernetes' own: a deleted pod gets SIGTERM, has
``terminationGracePeriodSeconds`` to drain (it must exceed the workers'
``FLEET_DRAIN_TIMEOUT_S``), then SIGKILL. Replicas are counted as the HPA counts them, from
the scale's ``spec.replicas``: a pod terminating is no longer wanted and does not count.

Uses the official client (``pip install 'fleet[kubernetes]'``), in a thread since it blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Final, Protocol

from fleet.errors import ConfigError
from fleet.scaling.base import BackendError, Replica, WorkerStats
from fleet.settings import Settings

log = logging.getLogger(__name__)

# Where a pod finds its own namespace (the service account's mount).
POD_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT_S: Final = 10.0


class ScaleApi(Protocol):
    """The calls of the client's ``AppsV1Api`` the backend uses: the scale subresource of a
    Deployment (``/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale``)."""

    def read_namespaced_deployment_scale(
        self, name: str, namespace: str, *, _request_timeout: float | None = None
    ) -> Any:
        """``GET``: a ``V1Scale`` (``spec.replicas``, ``status.replicas``, ``status.selector``)."""

    def patch_namespaced_deployment_scale(
        self,
        name: str,
        namespace: str,
        body: dict[str, Any],
        *,
        _request_timeout: float | None = None,
        _content_type: str | None = None,
    ) -> Any:
        """``PATCH`` with ``body`` (a merge patch of the scale); returns the new ``V1Scale``."""


def _reason(exc: Exception) -> str:
    """The API server's message for an ``ApiException`` (its ``Status`` body), else the error."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    message = ""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = str(json.loads(body or "")["message"])
    return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".rstrip() + (
        f": {message}" if message else ""
    )


def pod_namespace(settings: Settings, *, namespace_file: Path = POD_NAMESPACE_FILE) -> str:
    """``FLEET_SUPERVISOR_NAMESPACE``, else the namespace of the pod this runs in, else
    ``default`` (outside a cluster, as kubectl does without one in the kubeconfig)."""
    if settings.supervisor_namespace:
        return settings.supervisor_namespace
    with contextlib.suppress(OSError):
        return namespace_file.read_text().strip() or "default"
    return "default"


class KubernetesBackend:
    """The pods of one Deployment, through its scale subresource only."""

    name = "kubernetes"

    @classmethod
    def from_settings(cls, api: ScaleApi, settings: Settings) -> KubernetesBackend:
        """The Deployment ``supervisor_deployment`` in ``pod_namespace(settings)``."""
        return cls(
            api, deployment=settings.supervisor_deployment, namespace=pod_namespace(settings)
        )

    def __init__(self, api: ScaleApi, *, deployment: str, namespace: str) -> None:
        self._api = api
        self.deployment = deployment
        self.namespace = namespace

    @property
    def _what(self) -> str:
        return f"deployments/{self.deployment}/scale in namespace {self.namespace}"

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except Exception as exc:
            hint = ""
            if getattr(exc, "status", None) == 403:
                hint = (
                    " (the supervisor's Role must allow get and patch on deployments/scale "
                    f"with resourceNames [{self.deployment}])"
                )
            elif getattr(exc, "status", None) == 404:
                hint = " (set FLEET_SUPERVISOR_DEPLOYMENT and FLEET_SUPERVISOR_NAMESPACE)"
            raise BackendError(
                f"kubernetes: {what} {self._what} failed: {_reason(exc)}{hint}"
            ) from exc

    async def _scale(self) -> tuple[int, int]:
        """(``spec.replicas``, ``status.replicas``) of the Deployment's scale."""
        scale = await self._call(
            "get", self._api.read_namespaced_deployment_scale, self.deployment, self.namespace
        )
        spec = int(getattr(scale.spec, "replicas", None) or 0) if scale.spec else 0
        status = int(getattr(scale.status, "replicas", None) or 0) if scale.status else 0
        return spec, status

    async def ping(self) -> None:
        """Raise `BackendError` when the API server does not answer or refuses the scale."""
        await self._scale()

    async def replicas(self) -> list[Replica]:
        """One entry per replica the Deployment wants (``spec.replicas``), the first
        ``status.replicas`` of them ``running``, the rest ``pending``.

        The scale subresource gives counts, not pods (the Role allows no more), so the
        entries are numbered, not named after pods. Pods terminating are not counted.
        """
        want, have = await self._scale()
        return [
            Replica(
                f"{self.namespace}/{self.deployment}/{i}",
                f"{self.deployment}-{i}",
                0.0,
                "running" if i < have else "pending",
            )
            for i in range(want)
        ]

    async def scale_to(self, n: int) -> None:
        """Patch ``spec.replicas`` to ``n`` (a merge patch of the scale, as
        `kubectl scale` sends); the Deployment controller does the rest."""
        await self._call(
            f"patch replicas={n}",
            self._api.patch_namespaced_deployment_scale,
            self.deployment,
            self.namespace,
            {"spec": {"replicas": n}},
            _content_type="application/merge-patch+json",
        )
        log.info("deployment %s/%s scaled to %d", self.namespace, self.deployment, n)

    async def get_worker_stats(self) -> list[WorkerStats]:
        """The replicas with no CPU or memory: the Role allows no pod metrics (use
        `kubectl top pods` or the cluster's metrics pipeline)."""
        return [WorkerStats(r.id, r.name, r.state, None, None) for r in await self.replicas()]

    async def close(self) -> None:
        """Nothing to wait for: Kubernetes finishes the terminations it started."""
        return None


def connect_cluster(kubeconfig: str | None = None) -> ScaleApi:
    """``AppsV1Api`` configured from the pod's service account, else from ``kubeconfig``
    (paths separated by ``:``, as ``KUBECONFIG``; None: ``~/.kube/config``, as kubectl).

    Raises ``ConfigError`` naming the fix when the client is not installed or neither is found.
    """
    try:
        from kubernetes import client, config  # noqa: PLC0415 - the optional extra
    except ImportError:
        raise ConfigError(
            "the kubernetes backend needs the official client: pip install 'fleet[kubernetes]' "
            "(or build the image with --build-arg EXTRAS=kubernetes)"
        ) from None
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or None
            )
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(
                f"kubernetes: no service account (not in a pod) and no usable kubeconfig "
                f"({exc}); run in the cluster with the supervisor's ServiceAccount, or set "
                "KUBECONFIG"
            ) from None
    api: ScaleApi = client.AppsV1Api()
    return api
